"""python3 -m committee serve|query|report: a teacher without a server script of one's own,
and a report with plots of training runs.

    python3 -m committee serve --forward MODULE:CALLABLE --name NAME --role ROLE \
        --data fashion-mnist|DIR --view VIEW --outputs logits:10[,hidden:64] --bind EP [--http H:P]
    python3 -m committee serve --mlp CHECKPOINT.safetensors --name NAME ...
    python3 -m committee query --connect EP --ids 0-9 [--outputs logits] [--split test]
    python3 -m committee report RUN.jsonl... --out DIR

Exit codes: 0 success, 1 failure, 2 usage error.
"""
import argparse
import importlib
import importlib.util
import os
import sys

import numpy as np

SERVE_HELP = """\
Serves a Python teacher over committee.v1 (proto/README.md), as teacher-server serve does:
Hello, BatchRequest/BatchReply in F32, F16 or BF16 with optional top-k logits, a bounded
queue answering BUSY, heartbeats, Bye and exit 0 on SIGINT/SIGTERM, /healthz /readyz
/metrics on --http.

The forward callable (--forward MODULE:CALLABLE, MODULE a module name on PYTHONPATH or a
.py file) receives a float32 NumPy array of the view's rows [batch, features] (784 for
fashion-mnist's full view, 196 for pool14, 49 for pool7; any view of a dataset folder
--data DIR, dense, categorical, tokens or derived (avgpool:K, standardize); computed
and checked as the C code does, bit for bit)
and returns a dict {output name: array [batch, *shape]} with at least the outputs asked
for. --mlp FILE serves a C MLP checkpoint from teacher-server fit instead, bit for bit
as teacher-server serve would, with its spec, hash, view and head.

Environment: PYTHONPATH must name python/ and the directory of committee_pb2 (make python
writes it to build/python)."""


def _callable(text):
    module_name, _, attribute = text.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"--forward '{text}' is not MODULE:CALLABLE")
    if module_name.endswith(".py"):
        spec = importlib.util.spec_from_file_location("committee_user_forward", module_name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    value = module
    for part in attribute.split("."):
        value = getattr(value, part)
    if not callable(value):
        raise ValueError(f"--forward {text} is not callable")
    return value


def _ids(text):
    ids = []
    for item in text.split(","):
        first, _, last = item.partition("-")
        ids.extend(range(int(first), int(last or first) + 1))
    return ids


def serve(args):
    from .teacher import Teacher
    role = args.role or ("complementary" if args.mlp else "foundation")
    options = dict(name=args.name, role=role, data=args.data, view=args.view,
                   data_dir=args.data_dir, max_train=args.max_train, max_test=args.max_test,
                   queue=args.queue, max_examples=args.max_examples,
                   max_message_mb=args.max_message_mb, heartbeat_ms=args.heartbeat_ms,
                   compute_delay_ms=args.compute_delay_ms, curve_secret_key=args.curve_secret_key,
                   allow_keys=args.allow_keys, insecure_public=args.insecure_public,
                   model_id=args.model_id, model_sha256=args.model_sha256,
                   model_file=args.model_file, max_in_flight=args.max_in_flight)
    if args.mlp:
        from .mlp import Mlp
        model = Mlp(args.mlp, exact=not args.inexact)
        options.update(forward=model.forward, outputs={"logits": (model.classes,),
                                                       "hidden": (model.hidden_width,)},
                       model_id=args.model_id or model.spec, model_file=args.mlp,
                       view=args.view or model.view,
                       head=None if args.lend_head == "off" else {"hidden": model.head()})
        if not args.name:
            options["name"] = os.path.basename(args.mlp).replace(".safetensors", "")
    else:
        if not args.forward or not args.outputs or not args.name or not args.view:
            raise ValueError("serve needs --forward MODULE:CALLABLE (or --mlp FILE), --name, "
                             "--view and --outputs")
        options.update(forward=_callable(args.forward), outputs=args.outputs)
    options["view"] = options["view"] or "full"
    teacher = Teacher(**options)
    return teacher.serve(bind=args.bind, http=args.http)


def query(args):
    from .client import Client
    with Client(args.connect, timeout_ms=args.timeout_ms) as client:
        hello = client.hello()
        print(f"teacher '{hello.peer_name}' ({hello.model_id}), view {hello.view} of "
              f"{hello.dataset_name}, dataset {hello.dataset_fingerprint}, outputs "
              + ", ".join(f"{o.name}{list(o.shape)}" for o in hello.outputs))
        result = client.query(_ids(args.ids), args.outputs.split(","), args.split,
                              args.encoding, args.top_k)
        np.set_printoptions(precision=4, suppress=True, linewidth=120)
        for name, value in result.items():
            print(f"{name}: {value}")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m committee", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="serve a Python teacher", description=SERVE_HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--forward", metavar="MODULE:CALLABLE", help="rows -> {output: array}")
    run.add_argument("--mlp", metavar="FILE", help="serve a C MLP checkpoint instead")
    run.add_argument("--inexact", action="store_true", help="--mlp with NumPy matmuls")
    run.add_argument("--lend-head", choices=("on", "off"), default="on", help="--mlp: lend the "
                     "head (hidden -> logits) [default: on]")
    run.add_argument("--name", help="teacher name")
    run.add_argument("--role", choices=("foundation", "complementary"),
                     help="[default: complementary with --mlp, else foundation]")
    run.add_argument("--data", default="fashion-mnist",
                     help="dataset: a dataset folder (dataset.json + .npy files) or "
                     "fashion-mnist [default: fashion-mnist]")
    run.add_argument("--data-dir", help="dataset files [default: $COMMITTEE_DATA_DIR or "
                     "/usr/share/datasets/fashion-mnist]")
    run.add_argument("--view", help="view the model reads: full, pool14, pool7")
    run.add_argument("--outputs", metavar="NAME:SHAPE,...", help="e.g. logits:10,hidden:64 "
                     "(tokens:16x64 for two dimensions)")
    run.add_argument("--bind", default="tcp://127.0.0.1:5555", help="ZeroMQ endpoint")
    run.add_argument("--http", default="127.0.0.1:9100", help="HOST:PORT of /healthz, /readyz "
                     "and /metrics, or off")
    run.add_argument("--model-id", help="model id in the Hello [default: python:NAME]")
    run.add_argument("--model-sha256", help="64 hex digits identifying the weights")
    run.add_argument("--model-file", help="file whose SHA-256 identifies the weights")
    run.add_argument("--max-train", type=int, default=0, help="serve the first N train examples")
    run.add_argument("--max-test", type=int, default=0, help="serve the first N test examples")
    run.add_argument("--queue", type=int, default=32, help="requests queued before BUSY")
    run.add_argument("--max-in-flight", type=int, help="requests one peer may have in flight "
                     "[default: --queue]")
    run.add_argument("--max-examples", type=int, default=4096, help="ids per request")
    run.add_argument("--max-message-mb", type=int, default=64, help="largest message accepted")
    run.add_argument("--heartbeat-ms", type=int, default=1000, help="heartbeat interval")
    run.add_argument("--compute-delay-ms", type=int, default=0, help="sleep before each request "
                     "(simulates a slow teacher in tests)")
    run.add_argument("--curve-secret-key", metavar="FILE", help="CURVE key pair (BASENAME.key)")
    run.add_argument("--allow-keys", metavar="FILE|DIR", help="trainer public keys admitted")
    run.add_argument("--insecure-public", action="store_true", help="allow a non-loopback bind "
                     "without encryption")
    ask = commands.add_parser("query", help="ask a running teacher for outputs")
    ask.add_argument("--connect", required=True, help="teacher endpoint")
    ask.add_argument("--ids", default="0-3", help="ids, e.g. 0-9,42")
    ask.add_argument("--outputs", default="logits")
    ask.add_argument("--split", choices=("train", "test", "valid", "transfer"), default="train")
    ask.add_argument("--encoding", choices=("f32", "f16", "bf16"), default="f32")
    ask.add_argument("--top-k", type=int, default=0)
    ask.add_argument("--timeout-ms", type=int, default=10000)
    from . import report
    shown = commands.add_parser("report", help="an HTML page with plots of training runs",
                                description=report.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    report.add_arguments(shown)
    args = parser.parse_args(argv)
    if args.command == "report":
        return report.main(args)
    try:
        return serve(args) if args.command == "serve" else query(args)
    except (ValueError, OSError) as error:
        print(f"python3 -m committee {args.command}: {error}", file=sys.stderr)
        return 2 if isinstance(error, ValueError) else 1
    except Exception as error:  # a teacher that cannot start, a teacher that refuses
        print(f"python3 -m committee {args.command}: {type(error).__name__}: {error}",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
