"""The main training job.

    python -m jaxrl_desktop.train                                   # default CPU config, embedded server
    python -m jaxrl_desktop.train --config=configs/desktop_small.py --config.rl.group_size=8
    python -m jaxrl_desktop.train --config.env.servers=host1:50051,host2:50051 --config.workdir=runs/x

Rerunning the same command resumes from the newest good checkpoint in ``workdir``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

_DEFAULT = str(Path(__file__).resolve().parents[1] / "configs" / "desktop_small.py")


def _flag_error(err: Exception, argv: list[str]) -> flags.Error:
    """An unknown ``--config.<key>`` (an AttributeError / KeyError from inside ml_collections) as a
    :class:`flags.Error` naming the override."""
    text = str(err).replace("\\n", " ").replace("\n", " ").replace("\\'", "'").strip("'\" ")
    overrides = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
    named = [a for a in overrides if a.rsplit(".", 1)[-1] in text] or overrides
    kind = "unknown config key" if isinstance(err, (AttributeError, KeyError)) else "bad config override"
    return flags.Error(f"{kind} in {', '.join(named) or 'the command line'}: {text}")


def define_config_flag(flag_values: flags.FlagValues = flags.FLAGS, argv: list[str] | None = None):
    """``--config`` (a config file, ``lock_config``) with its ``--config.<key>=value`` overrides."""
    argv = sys.argv if argv is None else argv
    try:
        return config_flags.DEFINE_config_file("config", _DEFAULT, "Training config file.", flag_values=flag_values,
                                               lock_config=True, sys_argv=argv)
    except (AttributeError, KeyError, ValueError) as err:  # ml_collections applies overrides here
        raise _flag_error(err, argv) from None


def parse_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
    """Parse ``argv`` into ``flag_values`` with unknown config keys as :class:`flags.Error`."""
    try:
        return flag_values(argv)
    except (AttributeError, KeyError, ValueError) as err:
        raise _flag_error(err, argv) from None


def _fatal(err: flags.Error) -> None:
    sys.stderr.write(f"FATAL Flags parsing error: {err}\nPass --helpshort or --helpfull to see help on flags.\n")
    sys.exit(1)


def _parse_or_exit(argv: list[str]) -> list[str]:
    try:
        return parse_flags(argv)
    except flags.Error as err:
        _fatal(err)


try:
    _CONFIG = define_config_flag()
except flags.Error as _err:
    if __name__ != "__main__":
        raise
    _fatal(_err)
flags.DEFINE_bool("quiet", False, "Only warnings on the console (the progress bar stays).")


def configure_devices(n: int) -> None:
    """Simulate ``n`` CPU devices (must run before JAX creates a backend)."""
    import jax

    if n and jax.config.jax_platforms in (None, "", "cpu"):
        try:
            jax.config.update("jax_num_cpu_devices", n)
        except RuntimeError as err:  # backend already initialised (e.g. inside tests)
            logging.getLogger(__name__).warning("could not set %d CPU devices: %s", n, err)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cfg = _CONFIG.value
    logging.basicConfig(level=logging.WARNING if flags.FLAGS.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("absl", "jax._src", "orbax", "grpc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    configure_devices(cfg.num_cpu_devices)
    from jaxrl_desktop.trainer import Trainer, validate_config

    try:
        validate_config(cfg)
    except ValueError as err:
        raise app.UsageError(str(err)) from None

    with Trainer(cfg) as trainer:
        summary = trainer.run()
    out = Path(cfg.workdir) / "summary.json"
    out.write_text(json.dumps(summary, indent=2))
    print("\nheld-out success rate by phase (last evaluation of each phase):")
    for label, r in summary.items():
        print(f"  {label:<12} held-out {r['heldout_success']:.3f}   train {r['train_success']:.3f}   "
              f"invalid actions {r['heldout_invalid']:.3f}")
    print(f"metrics: {Path(cfg.workdir) / 'metrics.jsonl'}   plot: {Path(cfg.workdir) / 'training.png'}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app.run(main, flags_parser=_parse_or_exit)
