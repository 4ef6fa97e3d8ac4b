import pytest

from serve_app.byte_ranges import ByteRange, Unsatisfiable, parse


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-0", ByteRange(0, 0)),
        ("bytes=10-19", ByteRange(10, 19)),
        ("bytes=90-", ByteRange(90, 99)),
        ("bytes=-5", ByteRange(95, 99)),
        ("bytes=-500", ByteRange(0, 99)),
        ("bytes=50-5000", ByteRange(50, 99)),
        (" bytes = 1-2", ByteRange(1, 2)),
    ],
)
def test_single_ranges_are_clamped_to_the_file(header, expected):
    assert parse(header, 100) == expected


@pytest.mark.parametrize(
    "header", [None, "", "bytes=1-2,5-6", "items=1-2", "bytes=x-2", "bytes=5-1", "bytes=-", "bytes"]
)
def test_anything_else_means_the_whole_file(header):
    assert parse(header, 100) is None


@pytest.mark.parametrize(
    ("header", "size"), [("bytes=100-", 100), ("bytes=200-300", 100), ("bytes=-0", 100), ("bytes=-1", 0)]
)
def test_ranges_outside_the_file_are_unsatisfiable(header, size):
    with pytest.raises(Unsatisfiable):
        parse(header, size)
