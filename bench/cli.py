"""The `ffnbench` command."""
import argparse
import os
import signal
import sys
import time


def _die(message, code=2):
    print(f"ffnbench: error: {message}", file=sys.stderr)
    return code


def cmd_run(args):
    from ffnbench.bench import config
    from ffnbench.bench.run import launcher
    cfg = config.load(args.config, args.set)
    _, error = launcher.run_experiment(cfg, args.out)
    return _die(error, 1) if error else 0


def cmd_resume(args):
    from ffnbench.bench.run import launcher
    _, error = launcher.resume_experiment(args.run_dir)
    return _die(error, 1) if error else 0


def cmd_train(args):
    from ffnbench.bench import config
    from ffnbench.bench.run import context, control
    from ffnbench.bench.plan.jobs import scheduler_job_id, scheduler_run_dir
    from ffnbench.bench.run.rank import train
    cfg = config.load(args.config, args.set)
    run_dir = args.run_dir or scheduler_run_dir(cfg)
    os.makedirs(run_dir, exist_ok=True)
    record_config(cfg, run_dir)
    ctl = lambda: control.for_launch(context.layout_of(cfg).traits.launch, cfg["run"]["timeout_s"])
    if scheduler_job_id():  # a scheduler stops a job with SIGTERM to every rank: the summary must say so
        signal.signal(signal.SIGTERM, _interrupt)
    def interrupted(e):
        if ctl().rank == 0:
            from ffnbench.bench.run.summary import write_failure
            write_failure(run_dir, "interrupted", f"interrupted by {e or 'SIGINT'}; the job was stopped")
    try:
        train(cfg, run_dir)
    except KeyboardInterrupt as e:
        interrupted(e)
        raise
    except Exception as e:  # any rank's error aborts the whole job at once, with its own line
        if scheduler_job_id():
            # a scheduler signals every rank at once: a peer that stopped first can fail our collective
            # before our own SIGTERM is handled; give it a moment to land before blaming the error
            import time
            try:
                if not _SIGNALLED:
                    time.sleep(2.0)
            except KeyboardInterrupt as stop:
                interrupted(stop)
                raise stop from None
            if _SIGNALLED:  # it landed inside a C extension, which replaced its exception (TF's pybind11 does)
                from ffnbench.bench.run.launcher import Interrupted
                stop = Interrupted(_SIGNALLED[0])
                interrupted(stop)
                raise stop from None
        import traceback
        path = os.path.join(run_dir, f"rank{ctl().rank}.traceback.txt")
        with open(path, "w") as f:
            traceback.print_exc(file=f)
        plain = isinstance(e, (ValueError, FileNotFoundError, KeyError))
        ctl().fail((str(e).strip("'\"") if plain else f"{type(e).__name__}: {e}") + f" (traceback: {path})")
    return 0


def record_config(cfg, run_dir):
    """RUN_DIR/config.yaml as the launcher writes it, for a job started without it (`ffnbench job`'s
    scripts), so resume, evaluate and export find the run's config. Every rank writes the same text."""
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(path):
        import yaml
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            yaml.safe_dump(cfg, f, sort_keys=False)
        os.replace(tmp, path)


#: signals a scheduler sent this rank (its handler's exception may not survive the call it lands in)
_SIGNALLED = []


def _interrupt(signum, frame):
    from ffnbench.bench.run.launcher import Interrupted
    _SIGNALLED.append(signum)
    raise Interrupted(signum)


def cmd_peak(args):
    from ffnbench.bench.run.peak import PEAK_DTYPE, matmul_peak
    from ffnbench.bench.run.rank import configure_threads
    threads = args.threads or os.cpu_count()
    configure_threads(threads)
    peaks = {dtype: matmul_peak(seconds=args.seconds, dtype=dtype) for dtype in PEAK_DTYPE.values()}
    if args.json:
        import json
        print(json.dumps({"flops_per_s": peaks, "threads": threads, "n": 2048}))
    else:
        for dtype, flops in peaks.items():
            print(f"matmul peak: {flops / 1e9:.1f} GFLOP/s ({dtype}, n=2048, {threads} threads)")
    return 0


def cmd_data_synth(args):
    from ffnbench.model.synthetic import make_volume, write_h5
    image, labels = make_volume(tuple(args.shape), seed=args.seed, density=args.density)
    write_h5(args.out, image, labels)
    print(f"wrote {args.out}: image {image.shape} {image.dtype}, labels with {labels.max()} objects "
          f"(use data.image: {args.out}:image, data.labels: {args.out}:labels)")
    return 0


def cmd_data_import_flyem(args):
    import numpy as np
    from ffnbench.model.flyem import import_flyem
    raw, labels = import_flyem(args.dir, args.out)
    print(f"wrote {args.out}: raw {raw.shape} uint8 (mean {raw.mean():.1f}, stddev {raw.std():.1f}), labels "
          f"{len(np.unique(labels[labels > 0]))} bodies (use data.image: {args.out}:raw, data.labels: {args.out}:labels)")
    return 0


def cmd_strategies(args):
    from ffnbench import strategies
    for name in strategies.names():
        print(f"{name:16s} {(strategies.get(name).__doc__ or '').strip().splitlines()[0]}")
    return 0


def cmd_config(args):
    from ffnbench.bench import config
    print(config.describe(), end="")
    return 0


def cmd_sweep(args):
    given = [flag for flag, value, default in (("--ranks-per-node", args.ranks_per_node, 1), ("--threads", args.threads, None),
             ("--walltime", args.walltime, "01:00:00"), ("--account", args.account, None), ("--queue", args.queue, None),
             ("--mpi", args.mpi, "pmix"), ("--no-cpu-bind", args.no_cpu_bind, False),
             ("--one-at-a-time", args.one_at_a_time, False)) if value != default]
    if given and not args.scheduler:
        raise ValueError(f"sweep: {', '.join(given)} place batch jobs; add --scheduler slurm, or drop them to run here")
    if args.scheduler == "slurm":
        if args.only:
            raise ValueError("--only runs here: not with --scheduler slurm")
        from ffnbench.bench.plan.sweep_jobs import run_sweep_on_slurm
        options = {"ranks_per_node": args.ranks_per_node, "threads": args.threads, "walltime": args.walltime,
                   "account": args.account, "queue": args.queue, "mpi": args.mpi, "cpu_bind": not args.no_cpu_bind,
                   "one_at_a_time": args.one_at_a_time}
        sweep_dir, failed = run_sweep_on_slurm(args.sweep, args.out, args.set, options)
    else:
        from ffnbench.bench.plan.sweep import run_sweep
        sweep_dir, failed = run_sweep(args.sweep, args.out, args.set, args.only)
    return _die(f"{failed} run(s) of the sweep failed; see {sweep_dir}/index.json", 1) if failed else 0


def cmd_study(args):
    from ffnbench.bench.plan import studies
    from ffnbench.bench.plan.sweep import load_sweep, run_sweep
    path = studies.study_file(args.name)
    name = load_sweep(path)["name"]
    if name not in studies.ANALYSES:
        raise ValueError(f"study {args.name}: its sweep is named {name!r}; studies: {', '.join(studies.ANALYSES)}")
    if args.analyse_only:
        sweep_dir, failed = os.path.abspath(args.out or os.path.join(load_sweep(path)["out"], name)), 0
    else:
        sweep_dir, failed = run_sweep(path, args.out, args.set, args.only)
    from ffnbench.plots.common import save
    from ffnbench.plots.studies import FIGURES
    runs, data, lines, text = studies.analyse(name, sweep_dir)
    figures = save(FIGURES[name](runs, data), sweep_dir, name)
    print("\n".join(lines))
    print(f"wrote {' '.join([text, *figures])}")
    if args.archive:
        print(f"archived {studies.archive(name, sweep_dir, args.archive)} complete runs' evidence in {args.archive}")
    return _die(f"{failed} run(s) of the study failed; the analysis leaves them out; see {sweep_dir}/index.json",
                1) if failed else 0


def cmd_report(args):
    from ffnbench.bench.analyse.report import build_report
    text, _, seg = build_report(args.dir, args.target_loss)
    if args.seg_table:
        print(seg or f"no run below {args.dir} has eval.json (ARE, VOI)")
    else:
        print(text, end="")
    return 0


def cmd_plot(args):
    from ffnbench.plots.make import make_plots
    written, notes = make_plots(args.dir)
    for line in notes + [f"wrote {path}" for path in written]:
        print(line)
    return 0


def cmd_evaluate(args):
    from ffnbench.bench.measure.segmentation_eval import evaluate, evaluate_checkpoint, speed_line, table
    from ffnbench.plots.segmentation import plot_segmentation
    if args.checkpoint:
        if args.run_dir or not args.config:
            raise ValueError("evaluate: give RUN_DIR, or --checkpoint PREFIX with --config CONFIG")
        result, drawn, out_dir = evaluate_checkpoint(args.checkpoint, args.config, args.out, args.volume, args.set,
                                                     reference=args.reference)
    elif args.run_dir and not (args.config or args.out):
        result, drawn = evaluate(args.run_dir, args.volume, args.set, reference=args.reference)
        out_dir = args.run_dir
    else:
        raise ValueError("evaluate: give RUN_DIR (no --config/--out), or --checkpoint PREFIX with --config CONFIG")
    figure = plot_segmentation(drawn.image, drawn.gt, drawn.seg, os.path.join(out_dir, "segmentation.png"),
                               title=drawn.title, reference=drawn.reference, reference_name=drawn.reference_name)
    print(table(result))
    print(speed_line(result["speed"]))
    print(f"evaluated {result['volume']} in {result['seconds']:.1f}s; wrote {figure} and "
          f"{os.path.join(out_dir, 'segmentation.h5')}")
    print(os.path.join(out_dir, "eval.json"))
    return 0


def cmd_export(args):
    from ffnbench.bench.analyse.results import is_complete
    from ffnbench.model import ffn_checkpoint as fc
    if not os.path.isfile(os.path.join(args.run_dir, "config.yaml")):
        raise ValueError(f"export {args.run_dir}: not a run directory (no config.yaml)")
    if not is_complete(args.run_dir):
        raise ValueError(f"export {args.run_dir}: the run is not complete, so it has no final weights")
    weights, _, prefix = fc.read_weights(args.run_dir)
    step = int(prefix.rsplit("-", 1)[1])
    out = args.out or os.path.join(args.run_dir, "export", f"model.ckpt-{step}")
    print(f"wrote {fc.write_ffn_checkpoint(weights, out, step)} (.index, .data-00000-of-00001): google/ffn's "
          f"variable names ({fc.FFN_SCOPE}/<layer>/weights, biases) and global_step {step}")
    return 0


def cmd_job(args):
    from ffnbench.bench.plan.jobs import job_script
    script = job_script(args.config, args.scheduler, args.nodes, args.ranks_per_node, args.threads, args.set,
                        walltime=args.walltime, account=args.account, queue=args.queue, mpi=args.mpi,
                        cpu_bind=not args.no_cpu_bind)
    if args.out:
        with open(args.out, "w") as f:
            f.write(script)
        print(f"wrote {args.out}")
    else:
        print(script, end="")
    return 0


def cmd_calibrate(args):
    from ffnbench.bench.measure.calibrate import calibrate, ranks_main
    if args.ranks_part:
        ranks_main(args.ranks_part, args.params)
        return 0
    from ffnbench.bench.config import load
    from ffnbench.model.network import param_count
    cfg = load(args.config)  # no config: the defaults, i.e. the paper's model
    params = param_count(cfg["model"]["depth"], cfg["model"]["features"])
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    if args.link:
        _refuse_without_clusters()
    cal = calibrate(args.out, cfg, params, link=args.link)
    print(f"alpha = {cal['alpha_s'] * 1e6:.2f} us, 1/beta = {1 / cal['beta_s_per_byte'] / 1e6:.1f} MB/s "
          f"({8 / cal['beta_s_per_byte'] / 1e9:.3f} Gbit/s), "
          f"server apply = {cal['server_apply_s_per_byte'] * 1e9:.3f} ns/byte, raw MPI Allreduce of "
          f"{params} float32 between 2 ranks = {cal['allreduce_s'] * 1e3:.3f} ms; wrote {args.out}")
    return 0


def cmd_simulate(args):
    from dataclasses import replace
    from ffnbench.bench.analyse import simulate
    net = simulate.network(args.network)
    if args.validate:
        rows, notes = simulate.validate(args.validate, net)
        print(simulate.format_validation(rows))
        for note in notes:
            print(note)
        return 0
    if args.failures:
        from ffnbench.bench.analyse import failures
        fi = failures.FailureInputs(mtbf_node_h=args.mtbf_hours, work_h=args.work_hours,
                                    checkpoint_s=args.checkpoint_s, restart_s=args.restart_s,
                                    commit_every_s=args.commit_every_s, rendezvous_s=args.rendezvous_s,
                                    step_s=args.mean_s, servers=args.servers or 1)
        rows = [failures.goodput(mode, n, fi) for n in simulate.parse_workers(args.failures) for mode in failures.MODES]
        print(failures.format_goodput(rows, fi))
        return 0
    strategy = args.strategy or simulate.modelled_strategies()[0]
    if strategy not in simulate.modelled_strategies():
        raise ValueError(f"--strategy {strategy}: choose one of {', '.join(simulate.modelled_strategies())}")
    inp = simulate.compute_inputs(args, net)
    if args.servers:
        inp = replace(inp, servers=args.servers)
    print(f"simulated {strategy} as {simulate.simulator_model(strategy)} (discrete-event/Monte Carlo; network "
          f"{args.network}); compute per step: {'run ' + args.run if args.run else f'mean {args.mean_s}s cv {args.cv}'}")
    table = simulate.scaling_table(strategy, simulate.parse_workers(args.workers), inp)
    print(simulate.format_scaling(table))
    if args.histogram:
        print(simulate.format_histograms(table))
    return 0


def cmd_faultbench(args):
    import json
    from ffnbench.bench import config
    from ffnbench.bench.measure import faultbench
    cfg = config.load(args.config, args.set)
    victim = args.victim if args.victim is not None else cfg["ranks"] - 1
    if not 0 < victim < cfg["ranks"]:
        raise ValueError(f"--victim {victim}: must be a worker rank other than 0, below ranks={cfg['ranks']}")
    out = args.out or os.path.join(cfg["run"]["out"], "faultbench", f"{cfg['strategy']}-r{cfg['ranks']}")
    result = faultbench.measure(args.config, args.set, out, victim, args.kill_after)
    with open(os.path.join(out, "faultbench.json"), "w") as f:
        json.dump(result, f, indent=2)
    for key, value in result.items():
        print(f"{key}: {value:.2f}" if isinstance(value, float) else f"{key}: {value}")
    return 0


def cmd_commbench(args):
    from ffnbench.bench.measure import commbench
    from ffnbench.bench import config
    cfg = config.load(args.config)
    if args.ranks_part:
        commbench.ranks_main(args.ranks_part, cfg)
        return 0
    if args.rounds < 1:
        raise config.ConfigError(f"--rounds must be >= 1 (got {args.rounds})")
    from ffnbench.bench.run.launcher import cli_command
    if args.link:
        _refuse_without_clusters()
        link = None if args.link == "unshaped" else args.link
        if args.ranks < 2:
            raise config.ConfigError(f"--ranks with --link: the nodes, at least 2 (got {args.ranks})")
        result = commbench.measure_link(args.config, cfg, link, cli_command, args.rounds, nodes=args.ranks)
        commbench.print_link(result, commbench._params(cfg), link)
        return 0
    results, params = commbench.measure(args.config, cfg, args.ranks, cli_command, args.rounds)
    return 1 if commbench.print_table(results, params, args.ranks) else 0


def _refuse_without_clusters():
    from ffnbench.bench.run import netcluster
    reason = netcluster.unavailable_reason()
    if reason:
        raise RuntimeError(reason)


def cmd_cluster(args):
    """Bring an emulated cluster up, tear it down, or list those up."""
    from ffnbench.bench.run import netcluster
    if args.action == "check":
        reason = netcluster.unavailable_reason()
        print(f"emulated clusters: {reason or 'available (root, ip and tc found)'}")
        return 2 if reason else 0
    if args.action == "status":
        up = netcluster.clusters() if not netcluster.unavailable_reason() else {}
        print("\n".join(f"{name}: {nodes} nodes" for name, nodes in sorted(up.items())) or "no emulated cluster is up")
        return 0
    _refuse_without_clusters()
    if args.action == "down":
        netcluster.down(args.name)
        print(f"cluster {args.name}: down")
        return 0
    cluster = netcluster.Cluster(args.name, args.nodes, args.link)
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt(f"signal {signum} while setting up")
    signal.signal(signal.SIGTERM, stop)  # up() tears down what it made on any exception
    seconds = cluster.up()
    print(f"cluster {args.name}: {args.nodes} nodes {', '.join(cluster.address(n) for n in range(args.nodes))} "
          f"on {cluster.subnet}, links {args.link or 'unshaped'}; up in {seconds:.1f} s "
          f"(namespaces {cluster.namespace(0)}..{cluster.nodes - 1}; `ffnbench cluster down {args.name}`)")
    return 0


def cmd_timeline(args):
    from ffnbench.bench.analyse import horovod_timeline
    horovod_timeline.print_breakdown(horovod_timeline.breakdown(args.run_dir))
    return 0


def cmd_pairbench(args):
    from ffnbench.bench import config
    from ffnbench.bench.measure import pairbench
    from ffnbench.bench.run import context
    from ffnbench.bench.run.launcher import cli_command
    candidates = args.candidate or list(pairbench.DEFAULT_CANDIDATES)
    for candidate in candidates:  # a bad config or candidate is one line before anything runs
        context.layout_of(config.load(args.config, args.set + pairbench.parse_candidate(candidate)))
    out = args.out or os.path.join("results", "pairbench", time.strftime("%Y%m%d-%H%M%S"))
    try:
        above = pairbench.measure(args.config, args.set, candidates, out, args.rounds, cli_command)
    except RuntimeError as e:
        return _die(f"pairbench: {e}", 1)
    print(f"pairbench: results in {out}")
    return 1 if above else 0


def positive_int(text):
    value = int(text) if text.isdigit() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def add_only(parser):
    parser.add_argument("--only", metavar="REGEX", help="run now only the runs whose directory name REGEX matches "
                        "(e.g. 'link=100mbit|ranks=1,'); the others stay pending for a later resume")


def add_job_options(p):
    """How a batch job places its ranks: shared by `job` and `sweep --scheduler`."""
    p.add_argument("--ranks-per-node", type=positive_int, default=1)
    p.add_argument("--threads", type=positive_int, default=None,
                   help="threads per rank (default: the node's cores shared among its ranks; whole nodes)")
    p.add_argument("--walltime", default="01:00:00")
    p.add_argument("--account")
    p.add_argument("--queue")
    p.add_argument("--mpi", default="pmix", choices=["pmix", "pmi2", "none"], help="slurm: srun's --mpi plugin")
    p.add_argument("--no-cpu-bind", action="store_true", help="slurm: no --cpu-bind=cores (for nodes without binding)")


def add_overrides(p, help="override a config field (dotted.key=value; the value is YAML)"):
    """The --set option of every command that takes a config."""
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=help)


def parser():
    from ffnbench.bench.analyse.simulator import PAPER_PARAMS
    p = argparse.ArgumentParser(prog="ffnbench", description="Distributed FFN training benchmarks")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run one experiment (launches mpirun for ranks > 1)")
    r.add_argument("config")
    add_overrides(r)
    r.add_argument("--out", help="run directory (default: run.out/NAME-STRATEGY-rRANKS-TIME)")
    r.set_defaults(fn=cmd_run)
    u = sub.add_parser("resume", help="continue an interrupted run from its newest checkpoint")
    u.add_argument("run_dir")
    u.set_defaults(fn=cmd_resume)
    t = sub.add_parser("train", help="per-rank entry point, under mpirun/srun/aprun")
    t.add_argument("config")
    add_overrides(t)
    t.add_argument("--run-dir", help="where records go (default inside a batch job: run.out/NAME-STRATEGY-rN-JOBID)")
    t.set_defaults(fn=cmd_train)
    k = sub.add_parser("peak", help="measure this machine's dense matmul FLOP/s")
    k.add_argument("--threads", type=int, default=0)
    k.add_argument("--seconds", type=float, default=3.0)
    k.add_argument("--json", action="store_true", help="print {flops_per_s: {float32, bfloat16}, threads, n} as JSON")
    k.set_defaults(fn=cmd_peak)
    d = sub.add_parser("data", help="data tools").add_subparsers(dest="data_command", required=True)
    s = d.add_parser("synth", help="write a synthetic EM volume to HDF5 (datasets image, labels)")
    s.add_argument("--out", required=True)
    s.add_argument("--shape", type=int, nargs=3, default=[64, 128, 128], metavar=("Z", "Y", "X"))
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--density", type=float, default=1.0)
    s.set_defaults(fn=cmd_data_synth)
    fl = d.add_parser("import-flyem", help="convert FlyEM's layout (janelia-flyem/neuroproof_examples: "
                      "grayscale_maps/*.png, groundtruth.h5[.gz] stack + transforms) to HDF5 raw, labels")
    fl.add_argument("dir", help="a sample directory, e.g. neuroproof_examples/training_sample2")
    fl.add_argument("--out", required=True, help="the HDF5 file to write")
    fl.set_defaults(fn=cmd_data_import_flyem)
    g = sub.add_parser("strategies", help="list the strategies")
    g.set_defaults(fn=cmd_strategies)
    f = sub.add_parser("config", help="describe the config fields")
    f.add_argument("--doc", action="store_true", required=True, help="print configs/README.md (generated)")
    f.set_defaults(fn=cmd_config)
    w = sub.add_parser("sweep", help="run every experiment of a sweep file; re-running resumes")
    w.add_argument("sweep", help="sweep file (see configs/sweeps/)")
    w.add_argument("--out", help="sweep results directory (default: the file's out/name)")
    add_overrides(w, "add to the sweep's shared overrides, e.g. train.seed=100 for another seed base")
    add_only(w)
    w.add_argument("--scheduler", choices=["slurm"], help="submit each run as a Slurm job (default: run here)")
    w.add_argument("--one-at-a-time", action="store_true",
                   help="slurm: the sweep's jobs run one after another (sbatch --dependency=singleton), e.g. to "
                        "time runs that would share nodes")
    add_job_options(w)
    w.set_defaults(fn=cmd_sweep)
    y = sub.add_parser("study", help="run a study of the paper's findings (configs/studies/NAME.yaml) and "
                       "write its conclusions and figure; re-running resumes")
    y.add_argument("name", help="lr_scaling, batch_size, sync_async, segmentation or network (or a study file)")
    y.add_argument("--out", help="results directory (default: results/studies/NAME)")
    add_overrides(y, "as for sweep")
    add_only(y)
    y.add_argument("--analyse-only", action="store_true",
                   help="analyse the runs complete so far without running any (e.g. while a study runs)")
    y.add_argument("--archive", metavar="DIR",
                   help="also copy what the analysis reads of each complete run (configs, summaries, held-out "
                        "evaluations; no per-step records or checkpoints) and the figure to DIR, e.g. to commit "
                        "it; --out DIR then redraws or resumes from there")
    y.set_defaults(fn=cmd_study)
    e = sub.add_parser("report", help="table of a sweep's (or any directory's) runs; writes report.md/.csv")
    e.add_argument("dir")
    e.add_argument("--target-loss", type=float, help="held-out loss for time to target (default: the sweep's "
                   "report.target_loss, else the highest final loss among the runs)")
    e.add_argument("--seg-table", action="store_true", help="print only the method | ARE | VOI table")
    e.set_defaults(fn=cmd_report)
    o = sub.add_parser("plot", help="figures of a sweep's (or any directory's) runs, in DIR/plots/")
    o.add_argument("dir")
    o.set_defaults(fn=cmd_plot)
    v = sub.add_parser("evaluate", help="flood-fill a held-out volume with a run's model (or a checkpoint's); ARE and VOI")
    v.add_argument("run_dir", nargs="?", help="a training run's directory")
    v.add_argument("--checkpoint", help="instead of a run: a checkpoint prefix (google/ffn's TF1 or ffnbench's)")
    v.add_argument("--config", help="with --checkpoint: the network and inference settings (e.g. configs/ffn_fib25.yaml)")
    v.add_argument("--out", help="with --checkpoint: where eval.json goes (default: a new directory under run.out)")
    v.add_argument("--volume", help="file.h5:image,file.h5:labels (default: the run's held-out volume)")
    v.add_argument("--reference", metavar="FILE.h5:DATASET",
                   help="another segmentation of the same volume (e.g. google/ffn's) to score ours against")
    add_overrides(v, "override a config field, e.g. inference.min_segment_size=200")
    v.set_defaults(fn=cmd_evaluate)
    x = sub.add_parser("export", help="write a run's final weights as a google/ffn TF1 checkpoint")
    x.add_argument("run_dir")
    x.add_argument("--format", choices=["ffn"], required=True, help="ffn: google/ffn's variable names")
    x.add_argument("--out", help="checkpoint prefix (default: RUN_DIR/export/model.ckpt-STEP)")
    x.set_defaults(fn=cmd_export)
    j = sub.add_parser("job", help="write a cluster job script (slurm, pbs, cobalt) that runs `ffnbench train`")
    j.add_argument("config")
    j.add_argument("--scheduler", required=True, choices=["slurm", "pbs", "cobalt"])
    j.add_argument("--nodes", type=int, required=True)
    add_overrides(j, "override a config field (ranks is always nodes x ranks-per-node)")
    add_job_options(j)
    j.add_argument("--out", help="write the script here instead of printing it")
    j.set_defaults(fn=cmd_job)
    c = sub.add_parser("calibrate", help="measure MPI alpha/beta between two ranks and the server apply cost")
    c.add_argument("--out", default="results/calibration.json")
    c.add_argument("--ranks-part", help=argparse.SUPPRESS)
    c.add_argument("--config", help="size the Allreduce and server apply to this config's model and optimizer "
                   "(default: the defaults, the paper's model)")
    c.add_argument("--params", type=int, help=argparse.SUPPRESS)
    c.add_argument("--link", metavar="RATE", help="measure between 2 emulated nodes whose links are shaped to RATE "
                   "(e.g. 1gbit; 'unshaped'), for the simulator's network (needs root)")
    c.set_defaults(fn=cmd_calibrate)
    m = sub.add_parser("simulate", help="predict FOVs/s and efficiency at N workers (or validate against runs)")
    m.add_argument("--strategy", help="a strategy that declares a simulator model (default: the first)")
    m.add_argument("--workers", default="1,2,4,8,16,32,64,128,256,512,1024,2048,4096")
    m.add_argument("--network", default="theta_aries", help="preset name or calibration JSON")
    m.add_argument("--run", help="take per-step compute times, batch and model size from this run")
    m.add_argument("--mean-s", type=float, default=5.71, help="mean compute seconds per step (default: KNL, "
                   "4 FOVs at 0.7 FOVs/s)")
    m.add_argument("--cv", type=float, default=0.106, help="coefficient of variation of step compute time")
    m.add_argument("--batch", type=int, default=4)
    m.add_argument("--params", type=int, default=PAPER_PARAMS, help="gradient size in float32 (default: the "
                   "paper's model)")
    m.add_argument("--servers", type=int, default=0, help="parameter servers (ps strategies)")
    m.add_argument("--histogram", action="store_true",
                   help="also print each staleness distribution as emulated_async options (a sweep's runs)")
    m.add_argument("--validate", nargs="+", metavar="DIR", help="predicted vs measured for the runs below DIR")
    m.add_argument("--failures", metavar="NODES", help="goodput under node failures at these node counts "
                   "(e.g. 1024,2048) for restart, elastic and async recovery")
    m.add_argument("--mtbf-hours", type=float, default=43_800.0, help="--failures: mean hours between failures "
                   "of one node (default 5 years, an assumption)")
    m.add_argument("--work-hours", type=float, default=6.0, help="--failures: the job's failure-free length")
    m.add_argument("--checkpoint-s", type=float, default=30.0, help="--failures: seconds per checkpoint")
    m.add_argument("--restart-s", type=float, default=120.0, help="--failures: relaunch to first step")
    m.add_argument("--commit-every-s", type=float, default=60.0, help="--failures: elastic state commit interval")
    m.add_argument("--rendezvous-s", type=float, default=30.0,
                   help="--failures: elastic detection (Gloo's timeout) + re-rendezvous seconds")
    m.set_defaults(fn=cmd_simulate)
    f = sub.add_parser("faultbench", help="the time one killed worker costs (async goes on; sync resumes)")
    f.add_argument("config")
    add_overrides(f)
    f.add_argument("--victim", type=int, help="the worker rank to kill (default: the last)")
    f.add_argument("--kill-after", type=int, default=20, help="kill it once it has done this many steps")
    f.add_argument("--out", help="default: run.out/faultbench/STRATEGY-rRANKS")
    f.set_defaults(fn=cmd_faultbench)
    b = sub.add_parser("commbench", help="one gradient's exchange: the best plain MPI vs mpi_allreduce, Horovod and the PS round trip")
    b.add_argument("config", help="sizes the gradient to this config's model")
    b.add_argument("--ranks", type=int, default=2)
    b.add_argument("--rounds", type=int, default=3, help="times every mpirun is made, interleaved; each figure is "
                   "the median over them (default 3)")
    b.add_argument("--link", metavar="RATE", help="instead: raw MPI between --ranks emulated nodes (one rank each, "
                   "all sending at once in a ring) whose links are shaped to RATE (e.g. 100mbit, 1gbit; "
                   "'unshaped'), against that rate (needs root)")
    b.add_argument("--ranks-part", help=argparse.SUPPRESS)
    b.set_defaults(fn=cmd_commbench)
    cl = sub.add_parser("cluster", help="an emulated cluster on this machine: nodes as network namespaces on a "
                                        "bridge, links shaped to a rate (needs root)")
    cl.add_argument("action", choices=("up", "down", "status", "check"), help="check: whether clusters can run "
                    "here (exit 0), else why not (exit 2)")
    cl.add_argument("name", nargs="?", default="c", help="the cluster's name (1-6 letters or digits; default c)")
    cl.add_argument("--nodes", type=positive_int, default=2)
    cl.add_argument("--link", metavar="RATE", help="each node's link rate, each way (e.g. 1gbit); default unshaped")
    cl.set_defaults(fn=cmd_cluster)
    pb = sub.add_parser("pairbench", help="a 2-rank strategy against two independent 1-thread runs (the pair "
                                         "ceiling) and twice one alone, in interleaved rounds")
    pb.add_argument("config", help="the model, data and steps of every run (eval.every is set to 0)")
    add_overrides(pb, help="override a config field of every run (dotted.key=value), e.g. train.steps=200")
    pb.add_argument("--candidate", action="append", metavar="'KEY=VALUE ...'",
                    help="a 2-rank run as space-separated overrides (repeatable; default: "
                         "'strategy=allreduce ranks=2')")
    pb.add_argument("--rounds", type=positive_int, default=3, help="rounds, each running every run once (default 3)")
    pb.add_argument("--out", help="results directory (default: results/pairbench/TIME)")
    pb.set_defaults(fn=cmd_pairbench)
    tl = sub.add_parser("timeline", help="where an all-reduce run's exchange went, from its Horovod timeline "
                                        "(strategy_options.timeline=true) beside its step records")
    tl.add_argument("run_dir")
    tl.set_defaults(fn=cmd_timeline)
    return p


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # TF 2.15 turns oneDNN's kernels and fusions on by default only on some Intel CPUs; elsewhere (AMD
    # EPYC, 2026-11-29) they train bench.yaml 2x faster. Ranks inherit this; set it to 0 to compare.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    import mpi4py
    mpi4py.rc.initialize = False  # only `train` starts MPI; the launcher must not become a rank
    mpi4py.rc.finalize = True
    mpi4py.rc.threads = True
    args = parser().parse_args(argv)
    from ffnbench.bench.config import ConfigError
    from ffnbench.strategies.declare import LayoutError
    try:
        return args.fn(args)
    except (ConfigError, LayoutError, FileNotFoundError, KeyError, ValueError, RuntimeError) as e:
        return _die(str(e).strip("'\""))
    except KeyboardInterrupt as e:  # launcher.Interrupted carries the signal; Ctrl-C elsewhere is SIGINT
        signum = getattr(e, "signum", 2)
        return _die(f"interrupted ({e or 'SIGINT'}); the job was stopped", 128 + signum)


if __name__ == "__main__":
    sys.exit(main())
