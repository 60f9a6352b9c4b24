"""The `ffnbench` command."""
import argparse
import os
import sys


def _die(message, code=2):
    print(f"ffnbench: error: {message}", file=sys.stderr)
    return code


def cmd_run(args):
    from bench import config, launcher
    cfg = config.load(args.config, args.set)
    launcher.check_layout(cfg)
    run_dir = launcher.make_run_dir(cfg, args.out)
    print(f"run directory: {run_dir}")
    if cfg["ranks"] == 1:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        from bench.train import train
        train(cfg, run_dir)
        return 0
    status, error = launcher.launch(cfg, run_dir)
    if status != 0:
        return _die(error.split("error: ", 1)[1] if error else f"mpirun exited with status {status}", 1)
    if not os.path.exists(os.path.join(run_dir, "summary.json")):
        return _die(f"run in {run_dir} ended without a summary", 1)
    return 0


def cmd_train(args):
    from bench import config
    from bench.train import train
    cfg = config.load(args.config, args.set)
    run_dir = args.run_dir or os.path.dirname(os.path.abspath(args.config))
    os.makedirs(run_dir, exist_ok=True)
    try:
        train(cfg, run_dir)
    except (ValueError, FileNotFoundError, KeyError) as e:
        from mpi4py import MPI
        from strategies.mpi_wait import fail
        fail(MPI.COMM_WORLD, str(e).strip("'\""))
    return 0


def cmd_peak(args):
    from bench.peak import matmul_peak
    from bench.train import configure_threads
    configure_threads(args.threads or os.cpu_count())
    print(f"matmul peak: {matmul_peak(seconds=args.seconds) / 1e9:.1f} GFLOP/s (float32, n=2048)")
    return 0


def cmd_data_synth(args):
    from model.synthetic import make_volume, write_h5
    image, labels = make_volume(tuple(args.shape), seed=args.seed, density=args.density)
    write_h5(args.out, image, labels)
    print(f"wrote {args.out}: image {image.shape} {image.dtype}, labels with {labels.max()} objects "
          f"(use data.image: {args.out}:image, data.labels: {args.out}:labels)")
    return 0


def cmd_strategies(args):
    import strategies
    for name, cls in sorted(strategies.REGISTRY.items()):
        print(f"{name:16s} {(cls.__doc__ or '').strip().splitlines()[0]}")
    return 0


def parser():
    p = argparse.ArgumentParser(prog="ffnbench", description="Distributed FFN training benchmarks")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run one experiment (launches mpirun for ranks > 1)")
    r.add_argument("config")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    r.add_argument("--out", help="run directory (default: run.out/NAME-STRATEGY-rRANKS-TIME)")
    r.set_defaults(fn=cmd_run)
    t = sub.add_parser("train", help="per-rank entry point, under mpirun/srun/aprun")
    t.add_argument("config")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    t.add_argument("--run-dir", help="where records go (default: the config's directory)")
    t.set_defaults(fn=cmd_train)
    k = sub.add_parser("peak", help="measure this machine's dense matmul FLOP/s")
    k.add_argument("--threads", type=int, default=0)
    k.add_argument("--seconds", type=float, default=3.0)
    k.set_defaults(fn=cmd_peak)
    d = sub.add_parser("data", help="data tools").add_subparsers(dest="data_command", required=True)
    s = d.add_parser("synth", help="write a synthetic EM volume to HDF5 (datasets image, labels)")
    s.add_argument("--out", required=True)
    s.add_argument("--shape", type=int, nargs=3, default=[64, 128, 128], metavar=("Z", "Y", "X"))
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--density", type=float, default=1.0)
    s.set_defaults(fn=cmd_data_synth)
    g = sub.add_parser("strategies", help="list the strategies")
    g.set_defaults(fn=cmd_strategies)
    return p


def main(argv=None):
    import mpi4py
    mpi4py.rc.initialize = False  # only `train` starts MPI; the launcher must not become a rank
    mpi4py.rc.finalize = True
    mpi4py.rc.threads = True
    args = parser().parse_args(argv)
    from bench.config import ConfigError
    from strategies.base import LayoutError
    try:
        return args.fn(args)
    except (ConfigError, LayoutError, FileNotFoundError, KeyError, ValueError) as e:
        return _die(str(e).strip("'\""))
    except KeyboardInterrupt:
        return _die("interrupted", 130)


if __name__ == "__main__":
    sys.exit(main())
