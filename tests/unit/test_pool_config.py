"""configs/providers.yaml: the shipped file, and what a broken one says."""

from __future__ import annotations

import pytest

from daygen.errors import InvalidInput
from daygen.settings import Settings
from pipelines.operations import OPERATIONS
from pipelines.pool_config import ProviderPools


def test_the_shipped_config_has_a_pool_for_every_provider_with_ideograms_documented_limit():
    pools = ProviderPools.load(Settings(_env_file=None).providers_config)
    assert set(pools.pools) == {op.provider for op in OPERATIONS.values()}
    assert pools["ideogram"].max_inflight_images == 10, "Ideogram's default: 10 images in flight per organisation"
    assert pools["qwen"].requests_per_minute is not None


def write(tmp_path, text: str):
    path = tmp_path / "providers.yaml"
    path.write_text(text)
    return path


def test_a_provider_without_a_pool_is_named(tmp_path):
    path = write(tmp_path, "ideogram: {actors: 1}\noffline: {actors: 1}\n")
    with pytest.raises(ValueError, match="no pool for qwen"):
        ProviderPools.load(path)


@pytest.mark.parametrize(
    "text",
    ["ideogram: {actors: 0}", "ideogram: {max_inflight_images: -1}", "ideogram: {actorz: 2}", "ideogram: [1, 2"],
)
def test_a_broken_config_is_refused_with_its_path(tmp_path, text):
    path = write(tmp_path, text + "\nqwen: {}\noffline: {}\n")
    with pytest.raises(ValueError, match=str(path)):
        ProviderPools.load(path)


def test_a_missing_file_is_refused_with_its_path(tmp_path):
    with pytest.raises(ValueError, match="cannot read"):
        ProviderPools.load(tmp_path / "nowhere.yaml")


def test_a_request_for_more_images_than_may_be_in_flight_could_never_start(tmp_path):
    pools = ProviderPools.load(write(tmp_path, "ideogram: {max_inflight_images: 3}\nqwen: {}\noffline: {}\n"))
    generate = OPERATIONS["ideogram.generate"]
    pools.check_fits(generate, {"num_images": 3})
    with pytest.raises(InvalidInput) as refused:
        pools.check_fits(generate, {"num_images": 4})
    assert refused.value.details == [{"field": "params.num_images", "message": "must be at most 3"}]
    pools.check_fits(OPERATIONS["ideogram.describe"], {})
