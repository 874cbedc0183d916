"""``fulmen fabric run script.py --devices 2 ...``: run a Fabric script on several processes with torchrun;
``fulmen fabric consolidate <folder> --output_file <file>``: a sharded checkpoint directory into one file.

The flags are exported as Lightning's ``LT_*`` variables, which ``Fabric(...)`` reads as its defaults, and
the script is started with ``torch.distributed.run`` (torchrun) once per device, so a script written for
one device (``fabric = Fabric(); fabric.launch()``) runs on any number of them unchanged.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

_USAGE = "fulmen fabric run script.py [options] [script args...] [-- script args...]"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fulmen fabric run",
        usage=_USAGE,
        description="Run a Fabric script on several devices/nodes (torchrun underneath).",
    )
    p.add_argument(
        "script", help="the script to run; arguments this command does not know, and all after `--`, go to it"
    )
    p.add_argument("--accelerator", default=None, help="cpu, cuda (gpu), mps or auto")
    p.add_argument("--strategy", default=None, help="e.g. ddp or fsdp (default: Fabric's choice)")
    p.add_argument(
        "--devices", default="1", help="devices per node: a number, 'auto', -1 or '0,1' (default 1)"
    )
    p.add_argument("--num-nodes", "--num_nodes", dest="num_nodes", type=int, default=1)
    p.add_argument("--node-rank", "--node_rank", dest="node_rank", type=int, default=0)
    p.add_argument("--main-address", "--main_address", dest="main_address", default="127.0.0.1")
    p.add_argument(
        "--main-port",
        "--main_port",
        dest="main_port",
        type=int,
        default=None,
        help="rendezvous port (default: a free port on one node, 29400 on several)",
    )
    p.add_argument("--precision", default=None, help="e.g. 32-true, bf16-mixed, 16-mixed")
    return p


def _processes_per_node(devices: str, accelerator: str | None) -> int:
    value = devices.strip()
    if "," in value:
        return len([v for v in value.split(",") if v.strip()])
    if value in ("auto", "-1"):
        if accelerator in (None, "auto", "cuda", "gpu"):
            import torch

            if torch.cuda.is_available():
                return torch.cuda.device_count()
        return 1
    if value.isdigit() and int(value) > 0:
        return int(value)
    raise SystemExit(
        f"fulmen fabric run: --devices={devices!r} is not valid; expected a number, 'auto', -1 or '0,1'."
    )


def run(argv: list[str]) -> int:
    """Options may come before or after the script; the script gets every argument this command does not
    know, and everything after ``--`` (use it when the script has options named like ours)."""
    tail: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, tail = argv[:cut], argv[cut + 1 :]
    args, unknown = _parser().parse_known_args(argv)
    args.script_args = unknown + tail
    if not os.path.isfile(args.script):
        print(f"fulmen fabric run: no such script: {args.script!r}", file=sys.stderr)
        return 2
    nproc = _processes_per_node(args.devices, args.accelerator)
    env = os.environ.copy()
    env["LT_CLI_USED"] = "1"
    env["LT_DEVICES"] = str(args.devices)
    env["LT_NUM_NODES"] = str(args.num_nodes)
    for name in ("accelerator", "strategy", "precision"):
        value = getattr(args, name)
        if value is not None:
            env[f"LT_{name.upper()}"] = str(value)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={nproc}",
        f"--nnodes={args.num_nodes}",
    ]
    if args.num_nodes == 1 and args.main_port is None:
        command.append("--standalone")  # torchrun picks a free port
    else:
        command += [
            f"--node-rank={args.node_rank}",
            f"--master-addr={args.main_address}",
            f"--master-port={args.main_port or 29400}",
        ]
    command += [args.script, *args.script_args]
    return subprocess.call(command, env=env)


def consolidate(argv: list[str]) -> int:
    """``fulmen fabric consolidate <checkpoint_folder> [--output_file FILE]``: turn the directory written with
    ``FSDPStrategy(state_dict_type="sharded")`` into one regular checkpoint file (one process, no GPU; it needs
    memory for the whole model and optimizer state)."""
    p = argparse.ArgumentParser(
        prog="fulmen fabric consolidate",
        description="Convert a sharded (FSDP, torch.distributed.checkpoint) checkpoint directory into one "
        "regular checkpoint file that loads with torch.load(weights_only=True), load_from_checkpoint and as a "
        "Trainer ckpt_path.",
    )
    p.add_argument("checkpoint_folder", help="the sharded checkpoint directory")
    p.add_argument(
        "--output_file",
        "--output-file",
        dest="output_file",
        default=None,
        help="the file to write; must not exist (default: the folder's path with '.consolidated' appended)",
    )
    args = p.parse_args(argv)
    from fulmen.checkpoint.sharded import consolidate_checkpoint_to_file

    folder = os.fspath(args.checkpoint_folder).rstrip("/\\") or args.checkpoint_folder
    output = args.output_file if args.output_file is not None else folder + ".consolidated"
    try:
        out = consolidate_checkpoint_to_file(folder, output)
    except (OSError, ValueError) as exc:
        print(f"fulmen fabric consolidate: {exc}", file=sys.stderr)
        return 2
    print(f"Consolidated {folder!r} into {str(out)!r}")
    return 0


def main(argv: list[str]) -> int:
    """``fulmen fabric <command>``: ``run`` (a Fabric script on several processes) or ``consolidate`` (a
    sharded checkpoint directory into one file)."""
    if not argv or argv[0] in ("-h", "--help"):
        print(
            "usage: fulmen fabric {run,consolidate} ...\n\ncommands:\n  run          run a Fabric script on several "
            "devices/nodes\n  consolidate  turn a sharded (FSDP) checkpoint directory into one checkpoint file\n\n"
            "Run `fulmen fabric run --help` or `fulmen fabric consolidate --help` for the options."
        )
        return 0
    if argv[0] == "run":
        return run(argv[1:])
    if argv[0] == "consolidate":
        return consolidate(argv[1:])
    print(f"fulmen fabric: unknown command {argv[0]!r}; expected 'run' or 'consolidate'.", file=sys.stderr)
    return 2
