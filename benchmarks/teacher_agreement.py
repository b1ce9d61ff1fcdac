"""Does a distilled student follow its teacher? Test-set top-1 agreement and KL divergence to the teacher.

For a teacher run and student runs (scratch and distilled, in pairs of the same seed), each student's
test accuracy, its top-1 agreement with the teacher and the batch-mean KL(teacher_T || student_T) of the
outputs softened at --temperature (the distillation loss's own term); then how often the two students of
each pair agree. A student that learned from the teacher sits closer to it than one trained without it:
the check that distillation used the teacher at all, whatever it did to accuracy.

    python benchmarks/teacher_agreement.py runs/lab1-cnn/teacher runs/lab1-distill/scratch-s0 \
        runs/lab1-distill/distill-s0 ...
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from dla.build import load_run_model
from dla.data.batches import to_unit_float
from dla.data.vision import default_data_root, load_arrays
from dla.device import prepare_input
from dla.rundir import RunDir


def test_logits(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    model, cfg = load_run_model(RunDir.open(path))
    _, test, _ = load_arrays(cfg.data.name, default_data_root(), False)
    x = to_unit_float(test.x)
    with torch.inference_mode():
        logits = torch.cat([model(prepare_input(x[i : i + 500], False)).float() for i in range(0, len(x), 500)])
    return logits, test.y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("teacher")
    ap.add_argument("students", nargs="+", help="student runs; pairs of the same seed (scratch, distilled)")
    ap.add_argument("--temperature", type=float, default=4.0)
    args = ap.parse_args()
    if not args.temperature > 0:
        ap.error("--temperature must be > 0")
    t_logits, y = test_logits(args.teacher)
    t_pred = t_logits.argmax(1)
    print(f"teacher {args.teacher}: test accuracy {(t_pred == y).float().mean():.2%}\n")
    print(f"| student | test acc | agrees with teacher | KL to teacher (T={args.temperature:g}) |")
    print("|---|---:|---:|---:|")
    preds = []
    for path in args.students:
        logits, _ = test_logits(path)
        pred = logits.argmax(1)
        preds.append(pred)
        t = args.temperature
        kl = F.kl_div(F.log_softmax(logits / t, 1), F.log_softmax(t_logits / t, 1), reduction="batchmean",
                      log_target=True)
        print(f"| {path} | {(pred == y).float().mean():.2%} | {(pred == t_pred).float().mean():.2%} | {kl:.4f} |")
    for i in range(0, len(preds) - 1, 2):
        print(f"\n{args.students[i]} and {args.students[i + 1]} agree on "
              f"{(preds[i] == preds[i + 1]).float().mean():.2%} of the test images", end="")
    print()


if __name__ == "__main__":
    main()
