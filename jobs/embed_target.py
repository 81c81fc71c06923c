"""Ray job entrypoint: `python -m jobs.embed_target --config FILE [key=value ...]` (see cluster/README.md)."""

from jobs._entry import run

if __name__ == "__main__":
    run("embed_target")
