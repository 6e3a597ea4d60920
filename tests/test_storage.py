"""Small files at local paths and URIs (bundles have their own tests in test_bundle.py)."""

import pytest

from ray_sentiment.errors import DataError
from ray_sentiment.storage import write_text


def test_report_written_to_a_bucket_and_to_a_new_local_folder(s3_server, tmp_path):
    write_text(s3_server.uri("reports/test.json"), '{"accuracy": 0.9}\n')
    with s3_server.filesystem().open_input_stream(f"{s3_server.BUCKET}/reports/test.json") as f:
        assert f.read() == b'{"accuracy": 0.9}\n'
    write_text(str(tmp_path / "new" / "report.json"), "ok ✓")
    assert (tmp_path / "new" / "report.json").read_text(encoding="utf-8") == "ok ✓"


def test_unwritable_destination_is_named(s3_server):
    with pytest.raises(DataError, match="cannot write s3://no-such-bucket/report.json"):
        write_text("s3://no-such-bucket/report.json", "{}")
