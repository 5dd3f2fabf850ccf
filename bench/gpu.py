"""SSv2-OTAM's targets on one GPU, measured by one command on synthetic data of SSv2's shape, each
against what bounds it in the same run. The parts, in order (`--parts` picks some):

peaks       dense matmul rate of 8192³ products in bfloat16, float16, TF32 and IEEE float32
            (fewshot/flops.py's probes): the bounds.
extraction  bench/extraction.py's ``gpu_extraction``: clips in SSv2's format through each decoder
            installed, the backbone alone, `sact extract` end to end; OTAM's 71,796 videos
            extrapolated (goal 5 min).
loader      the tiered feature cache of `sact train` (device, host memory, store), each tier's
            episodes/s against its bound (memory copy rate, file read rate).
steps       the SA-CT training step at ResNet-50 dims (T = 8, 7x7, D = 2048, d_k = 1152, 5-way
            5-shot 5 queries) in each precision policy and step mode (`policies`, `step_modes`): its
            time against fewshot/flops.py's analytic FLOP count over the peaks above, at the
            step's own precision and at bfloat16 (goal: ≤ 2× the bfloat16 bound).
training    the training loop with the tier mix OTAM's train split would get on this machine; 75,000
            episodes projected from the timed steps and from the loop (goal 10 min), the loop's
            rate over the step's (does the loader keep up).
flips       the share of test predictions each precision flips against IEEE float32 on the run the
            parts above trained (goal ≤ 0.5%).
evaluation  bench/evaluate.py's ``measure`` on the store's test split (its videos spread over the
            shards, as in an OTAM store): read, embed and match timed alone and end to end, before
            and after 10e1c02, 10,000 5-way 5-shot episodes; OTAM's 2,857 videos extrapolated by
            the share of them the split holds (goal 5 s in all, 1 s for the match).
sweep       bench/sweep.py's ``measure``: the ssv2-otam recipe's 5 variants (`sweep_variants`: the
            tiny scale runs SA-CT alone), two seeds (10 of its 15 runs), each `scale.steps` steps
            (eager) and 1,000 test episodes per shot, (a) one by one, (b) by `sact sweep` one
            after another and (c) side by side (each variant's seeds in one stacked step); the
            15-run comparison extrapolated to the recipe's 18,750 steps and 10,000 episodes per
            run, one after another and side by side (goal 60 min after extraction).

The store is a slice of OTAM's split (its classes, fewer videos); the rates extrapolate. The JSON
is rewritten after each part; a part that fails is recorded and the others go on; a part that
would not end within ``--budget-s`` (its usual seconds, ``Part.seconds``) is skipped with a note.
Another part is one `Part` more in bench/gpu_parts.py's `PARTS`, its usual seconds in
bench/gpu_options.py's `PART_SECONDS`. The options are checked before torch is imported.

    .venv/bin/python bench/gpu.py --json gpu.json             # one GPU: within 8 minutes
    .venv/bin/python bench/gpu.py --scale tiny --device cpu   # seconds: the test suite runs it

On a lent GPU machine (the device tool: torch 2.11 at /opt/torch/.venv, Python 3.12, no network;
bench/RESULTS.md, "bench/gpu.py on a GPU machine"), first here, in the repository's root:

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \\
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \\
        --platform manylinux2014_x86_64 -d .whl zarr==3.1.6 numcodecs==0.16.6 \\
        donfig==0.8.1.post1 google-crc32c==1.9.0 av==18.1.0

then run, carrying `.whl` (45 MB), with a timeout of 600 s:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \\
        --target /tmp/site .whl/*.whl && mkdir -p /tmp/pp && ln -sfn "$PWD" /tmp/pp/sact \\
        && PYTHONPATH=/tmp/pp:/tmp/site PYTHONUNBUFFERED=1 python3 bench/gpu.py \\
        --json $OUT/gpu.json --budget-s 480
"""

from __future__ import annotations

from gpu_options import parse_options


def main() -> None:
    options = parse_options(__doc__.split("\n\n")[0])
    # the parts import torch, timm and torchvision (seconds): only once the options are right
    from gpu_parts import run

    run(options)


if __name__ == "__main__":
    main()
