"""docker-compose.yml and the Dockerfile, checked without a Docker engine: structure, the commands
parsed by the real CLI, the chroma healthcheck run against a real `chroma run`, and the Dockerfile's
offline model check run here. tests/test_service.py runs the same topology as real processes."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from typing import Any

import pytest
import typer
import yaml
from conftest import REPO, _free_port

from imgsearch.cli.main import app

COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
CHROMA_URL = "http://chroma:8000"


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def _interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` with VAR unset, and ``$$`` → ``$``."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value).replace("$$", "$")


def _command(service: dict[str, Any]) -> list[str]:
    return [_interpolate(str(part)) for part in service["command"]]


def _option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_three_services_share_one_chroma_server(services: dict[str, Any]) -> None:
    assert set(services) == {"chroma", "worker", "web"}
    chroma = services["chroma"]
    assert chroma["image"] == "chromadb/chroma:1.5.9"
    assert "chroma-data:/data" in chroma["volumes"]
    assert "chroma-data" in yaml.safe_load(COMPOSE.read_text())["volumes"]
    assert {"test", "interval", "timeout", "retries"} <= set(chroma["healthcheck"])
    for name in ("worker", "web"):
        svc = services[name]
        assert svc["build"] == "." and svc["image"] == "imgsearch:latest"
        assert svc["depends_on"] == {"chroma": {"condition": "service_healthy"}}
        assert _option(_command(svc), "--chroma-url") == CHROMA_URL
        assert _option(_command(svc), "--status") == "/status/worker.json"


def test_only_worker_and_web_reach_chroma(services: dict[str, Any]) -> None:
    # Chroma's server checks no token (tests/test_chroma_token.py): it must publish no port to the host,
    # and share its network with nothing but the two services that use it
    chroma = services["chroma"]
    assert "ports" not in chroma and "expose" not in chroma and "network_mode" not in chroma
    networks = yaml.safe_load(COMPOSE.read_text())["networks"]
    assert chroma["networks"] == ["store"] and networks["store"]["internal"] is True
    on_store = {name for name, svc in services.items() if "store" in svc.get("networks", ["default"])}
    assert on_store == {"chroma", "worker", "web"}
    assert all("networks" in svc for svc in services.values())  # none falls back to the default network
    assert services["worker"]["networks"] == ["store"]  # no route out: its model is baked into the image
    assert "ports" not in services["worker"]
    # the web page is published through another network: an internal one cannot publish ports
    assert set(services["web"]["networks"]) == {"store", "front"} and not networks["front"].get("internal")


def test_worker_watches_the_library_the_web_reads_thumbnails_from(services: dict[str, Any]) -> None:
    worker, web = _command(services["worker"]), _command(services["web"])
    assert worker[:2] == ["worker", "/library"] and web[0] == "serve"
    mounts = {name: [_interpolate(v).split(":") for v in services[name]["volumes"]] for name in ("worker", "web")}
    library = {name: [m for m in mounts[name] if m[1] == "/library"] for name in mounts}
    assert library["worker"] == library["web"] == [["./library", "/library", "ro"]]  # same path: stored paths work
    assert ["status", "/status"] in mounts["worker"] and ["status", "/status", "ro"] in mounts["web"]
    assert services["worker"]["stop_grace_period"]  # time to store what it embedded after SIGTERM
    # the web server listens on all container interfaces but is published on the host's loopback only
    assert _option(web, "--host") == "0.0.0.0" and services["web"]["ports"] == ["127.0.0.1:8080:8080"]
    assert "/readyz" in " ".join(services["web"]["healthcheck"]["test"])


def test_web_takes_its_token_from_the_environment(services: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    web = services["web"]
    assert _option(_command(web), "--host") == "0.0.0.0"  # reachable from other containers: a token is required
    env = dict(item.split("=", 1) for item in web["environment"])
    assert re.fullmatch(r"\$\{IMGSEARCH_TOKEN:\?.+\}", env["IMGSEARCH_TOKEN"])  # compose refuses to start without it
    assert "--token" not in _command(web)  # never on a command line, where every user of the host can read it
    assert "os.environ['IMGSEARCH_TOKEN']" in " ".join(web["healthcheck"]["test"])  # /readyz needs it too
    monkeypatch.setenv("IMGSEARCH_TOKEN", "s3cret")
    command = typer.main.get_command(app).commands["serve"]  # type: ignore[attr-defined]
    assert command.make_context("serve", _command(web)[1:]).params["token"] == "s3cret"


def test_commands_are_accepted_by_the_cli(services: dict[str, Any]) -> None:
    group = typer.main.get_command(app)
    for name in ("worker", "web"):
        args = _command(services[name])
        command = group.commands[args[0]]  # type: ignore[attr-defined]
        ctx = command.make_context(args[0], args[1:])  # raises on an unknown option or a bad value
        assert ctx.params["chroma_url"] == CHROMA_URL and ctx.params["model"] == "efficientnet-lite0"


def test_chroma_healthcheck_passes_on_a_live_server_and_fails_on_a_dead_one(
    services: dict[str, Any], chroma_server: str
) -> None:
    test = [_interpolate(part) for part in services["chroma"]["healthcheck"]["test"]]
    assert test[:3] == ["CMD", "/bin/bash", "-c"]
    port = chroma_server.rsplit(":", 1)[1]
    live = subprocess.run(["/bin/bash", "-c", test[3].replace("8000", port)], timeout=10, check=False)
    dead = subprocess.run(["/bin/bash", "-c", test[3].replace("8000", str(_free_port()))], timeout=10, check=False)
    assert live.returncode == 0 and dead.returncode != 0


def test_dockerfile_bakes_the_weights_and_installs_the_service_extras() -> None:
    text = DOCKERFILE.read_text()
    pins = [d for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"] if "==" in d]
    assert pins and all(pin in text for pin in pins if pin.startswith(("torch", "torchvision")))
    assert 'pip install ".[efficientnet,serve]"' in text
    assert 'ENTRYPOINT ["imgsearch"]' in text and "USER " in text
    offline = re.search(r'RUN --network=none python -c "([^"]+)"', text)
    assert offline and "load_embedder('efficientnet-lite0')" in offline.group(1)
    # the build's offline check, run here: it must load the model with what the package ships
    done = subprocess.run([sys.executable, "-c", offline.group(1)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
