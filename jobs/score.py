"""`ray job submit --working-dir . -- python jobs/score.py --model ... --input ... --output ...`

The same options as `ray-sentiment score`; inside a Ray job it joins the job's cluster.
"""

import sys

from ray_sentiment.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
