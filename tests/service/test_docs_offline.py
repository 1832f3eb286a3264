"""The docs pages work with no network: every asset they load is served by the service."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient


def test_docs_and_redoc_load_only_local_assets(client: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        html = client.get(page)
        assert html.status_code == 200 and html.headers["content-type"].startswith("text/html"), page
        sources = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html.text)
        sources += re.findall(r"""url:\s*['"]([^'"]+)['"]""", html.text)
        assert sources, page
        assert not [s for s in sources if re.match(r"(https?:)?//", s)], f"{page} loads from the network: {sources}"
        for source in sources:
            asset = client.get(source)
            assert asset.status_code == 200 and asset.content, (page, source)
    bundle = client.get("/static-offline-docs/swagger-ui-bundle.js")
    assert "SwaggerUIBundle" in bundle.text and bundle.headers["content-type"].startswith(("application/javascript", "text/javascript"))
    assert "Redoc" in client.get("/static-offline-docs/redoc.standalone.js").text


def test_the_docs_page_offers_authorize_for_the_api_key(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["APIKeyHeader"] == {
        "type": "apiKey",
        "description": "an API key from `facegate keys create` or POST /v1/keys",
        "in": "header",
        "name": "X-API-Key",
    }
    assert "/static-offline-docs" not in str(spec["paths"])
