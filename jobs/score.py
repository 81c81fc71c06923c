"""Ray job entrypoint: `python -m jobs.score --config FILE [key=value ...]` (see cluster/README.md)."""

from jobs._entry import run

if __name__ == "__main__":
    run("score")
