"""How long ``bridgenet bank add`` takes: new good parts into a trained model's bank.

    python -m bench.bank [--samples 40] [--work bench/work/bank] [--epochs 1]

Renders one synthetic category (bagel, default params: 256-pixel input, 40 training and 10
validation goods), trains it briefly (``--epochs``: the bank's cost does not depend on the
discriminator's weights), renders ``--samples`` new good parts, and times
:func:`bridgenet.bank.add_to_bank` on them: reading and preparing the files, embedding,
growing the bank, recalibrating on the validation goods, tracing the graph and saving
(registration not included). Prints the seconds and the bank sizes as JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from bench.common import PARAMS


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("bench/work/bank"))
    args = parser.parse_args(argv)

    import torch

    from bridgenet.bank import add_to_bank
    from bridgenet.config import load_params
    from bridgenet.data.synth.dataset import make_sample, synthesize, write_sample
    from bridgenet.preprocess import run_preprocess
    from bridgenet.train import train_category

    work = args.work.resolve()
    params = load_params(PARAMS, [
        "synth.categories=[bagel]", "data.categories=[bagel]", "synth.n_test_good=2", "synth.n_test_per_defect=1",
        "synth.preview=false", f"synth.out={work / 'data'}", f"data.root={work / 'data'}",
        f"data.cache_dir={work / 'cache'}", f"train.models_dir={work / 'models'}", f"train.epochs={args.epochs}",
        f"eval.reports_dir={work / 'reports'}", f"tracking.uri=sqlite:///{work / 'absent' / 'mlflow.db'}",
    ])
    model_file = work / "models" / "bagel" / "model.pt"
    if not model_file.is_file():
        synthesize(params.synth, Path(params.synth.out))
        run_preprocess(params)
        train_category(params, "bagel")
    new = work / "new_goods"
    shutil.rmtree(new, ignore_errors=True)
    synth = params.synth
    for index in range(args.samples):
        _, _, sample = make_sample(synth.seed + 77, "bagel", "train", "good", index, synth.image_size,
                                   synth.noise_std_m)
        write_sample(new, "bagel", "train", "good", index, sample)
    out = work / "update"
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    update = add_to_bank(params, "bagel", new, str(model_file), out_dir=out)
    seconds = time.perf_counter() - started
    result = {"samples": update.samples, "seconds": round(seconds, 2), "image_size": params.data.image_size,
              "threads": torch.get_num_threads(), "memory": update.memory}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
