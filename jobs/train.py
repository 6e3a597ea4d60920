"""`ray job submit --working-dir . -- python jobs/train.py --train ... --output ...`

The same options as `ray-sentiment train`; inside a Ray job it joins the job's cluster.
"""

import sys

from ray_sentiment.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
