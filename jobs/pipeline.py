"""Ray job entrypoint: `python -m jobs.pipeline --config FILE [key=value ...]` (see cluster/README.md)."""

from jobs._entry import run

if __name__ == "__main__":
    run("pipeline")
