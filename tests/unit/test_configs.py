"""The shipped configs match the code: every setting documented, the Serve config valid."""

from pathlib import Path

import yaml
from ray.serve.schema import ServeDeploySchema

from daygen.settings import Settings

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_settings_example_names_exactly_the_real_settings():
    lines = (CONFIGS / "settings.example.env").read_text().splitlines()
    documented = {line.split("=", 1)[0] for line in lines if line and not line.startswith("#")}
    assert documented == {"DAYGEN_" + name.upper() for name in Settings.model_fields}


def test_serve_config_is_a_valid_serve_deploy_file_pointing_at_our_builder():
    schema = ServeDeploySchema.model_validate(yaml.safe_load((CONFIGS / "serve.yaml").read_text()))
    [app] = schema.applications
    assert app.import_path == "serve_app.app:from_environment"
    assert [d.name for d in app.deployments] == ["daygen-api"]
