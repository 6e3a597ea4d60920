"""`make test`: the whole suite as two pytest processes at once, `--lane main` and `--lane side`
(conftest.py says which tests go where). Either lane alone leaves about a quarter of this
project's 2-CPU machine idle. The main lane prints as it runs; the side lane's output follows
it. The exit status is the main lane's, or else the side lane's; a lane left with no tests by
the options given (pytest's status 5) is no failure unless both are.

    python tests/lanes.py [pytest options]
"""

import signal
import subprocess
import sys
import tempfile
import time

NO_TESTS = 5  # pytest's exit status when no test was selected


def pytest(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pytest", *args], **kwargs)


def main() -> int:
    options = sys.argv[1:]
    started = time.monotonic()
    with tempfile.TemporaryFile("w+", encoding="utf-8") as side_output:
        # the side lane leaves pytest's cache to the main lane: two writers would race
        side = pytest(
            *options, "--lane", "side", "-p", "no:cacheprovider", stdout=side_output, stderr=subprocess.STDOUT
        )
        try:
            main_status = pytest(*options, "--lane", "main").wait()
            main_s = time.monotonic() - started
            side_status = side.wait()
        finally:
            if side.poll() is None:  # interrupted: the side lane ends its tests' processes itself
                side.send_signal(signal.SIGINT)
                side.wait()
        side_output.seek(0)
        print(f"\n{' the side lane ':=^80}", flush=True)
        sys.stdout.write(side_output.read())
    # the side lane's own time is on its last line above
    print(f"lanes: the main lane {main_s:.0f} s, both {time.monotonic() - started:.0f} s")
    if main_status == side_status == NO_TESTS:
        return NO_TESTS
    return next((status for status in (main_status, side_status) if status not in (0, NO_TESTS)), 0)


if __name__ == "__main__":
    sys.exit(main())
