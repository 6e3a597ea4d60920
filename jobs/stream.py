"""`ray job submit -- python jobs/stream.py --model DIR --broker URL --input-stream K --output-stream K`.
`ray job stop` sends SIGTERM: the consumers finish their batches in flight and the job ends."""

import sys

from ray_sentiment.cli import main

if __name__ == "__main__":
    sys.exit(main(["stream", *sys.argv[1:]]))
