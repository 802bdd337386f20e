"""`hap dlq list|show|replay`: read the dead-letter topic and replay letters after a fix.

A letter is named ``PARTITION:OFFSET`` (its place in the dead-letter topic, as ``list`` prints it).
``replay`` re-sends the original bytes to the original topic (:mod:`streams.kafka.dead_letters`):
do it once the cause is fixed (the producer, or the worker's contract), or the worker dead-letters
them again.
"""

from __future__ import annotations

import argparse
import base64
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dlq", description=__doc__)
    p.add_argument("action", choices=["list", "show", "replay"], help="list the letters, show some, or replay some")
    p.add_argument("ids", nargs="*", metavar="PARTITION:OFFSET", help="show/replay: the letters (see `list`)")
    p.add_argument("--kind", help="only letters of this reason_kind (list, replay --all; default: any)")
    p.add_argument("--topic", help="only letters whose input came from this topic, e.g. hap.ranking "
                   "(list, replay --all; default: any)")
    p.add_argument("--all", action="store_true", help="replay: every letter that matches --kind/--topic")
    p.add_argument("--limit", type=int, default=100, help="list: at most this many, newest last (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="list/show: JSON lines")


def run(args: argparse.Namespace) -> int:
    from deploy.settings import Settings
    from streams.kafka.dead_letters import read_letters, replay

    s = Settings.load()
    options = s.kafka_security.client_options()
    letters = [letter for letter in read_letters(s.kafka_bootstrap, s.topic("dlq"), **options)
               if (args.kind is None or letter.record.get("reason_kind") == args.kind)
               and (args.topic is None or letter.record.get("topic") == args.topic)]
    if args.action == "list":
        for letter in letters[-args.limit:]:
            r = letter.record
            if args.json:
                print(json.dumps({"id": letter.id, **{k: v for k, v in r.items() if k != "original"}}))
            else:
                print(f"{letter.id:>10}  {r.get('reason_kind'):<11} {r.get('topic') or '-':<16} "
                      f"{r.get('request_id') or '-':<24} {r.get('reason')}")
        return 0
    wanted = set(args.ids)
    chosen = letters if args.action == "replay" and args.all else [x for x in letters if x.id in wanted]
    missing = wanted - {x.id for x in chosen}
    if missing or not chosen:
        print(f"hap dlq: no such letter: {', '.join(sorted(missing)) or '(give PARTITION:OFFSET, or --all)'}")
        return 1
    if args.action == "show":
        for letter in chosen:
            record = dict(letter.record)
            if record.get("original") is not None and not args.json:
                record["original"] = base64.b64decode(record["original"]).decode("utf-8", "replace")
            print(json.dumps({"id": letter.id, **record}, indent=None if args.json else 2))
        return 0
    outcomes = replay(chosen, s.kafka_bootstrap, s.topic_prefix, **options)
    for letter, outcome in outcomes:
        print(f"{letter.id}: {outcome}")
    return 0 if all(o.startswith("replayed") for _, o in outcomes) else 1
