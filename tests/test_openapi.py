"""The OpenAPI document: valid OpenAPI 3.1, true to the catalog, and fuzzed by schemathesis."""

from __future__ import annotations

import os
import time

import jsonschema
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from crmkit.core.actors import SYSTEM
from tests.test_api import Client, asgi_app, make_crm, setup_org

# Bounded for CI (< 60 s on both backends); raise for a deeper hunt, e.g.
# CRMKIT_FUZZ_EXAMPLES=300 CRMKIT_FUZZ_ENTITIES=all CRMKIT_FUZZ_RANDOM=1 pytest tests/test_openapi.py
EXAMPLES_PER_OPERATION = int(os.environ.get("CRMKIT_FUZZ_EXAMPLES", "40"))
FUZZED_ENTITIES = os.environ.get("CRMKIT_FUZZ_ENTITIES", "lead,account").split(",")
DERANDOMIZE = os.environ.get("CRMKIT_FUZZ_RANDOM") != "1"
FUZZ_USER = os.environ.get("CRMKIT_FUZZ_USER", "admin")  # or mia (manager), alice/bob (sales reps)


@pytest.fixture
def served(tmp_path, db_url):
    """A CRM with an organisation and a little data, its app, and the admin's token."""
    crm = make_crm(tmp_path, db_url)
    org = setup_org(crm)
    acc = crm.records.create("account", {"name": "株式会社サンプル", "phone": "03-1234-5678"}, actor=SYSTEM)
    for i in range(5):
        crm.records.create(
            "lead",
            {"last_name": f"山田{i}", "company": "ｻﾝﾌﾟﾙ", "employees": i, "annual_revenue": "1000.50"},
            actor=SYSTEM,
        )
    crm.records.create("contact", {"last_name": "佐藤", "account": acc["id"]}, actor=SYSTEM)
    yield crm, asgi_app(crm), org
    crm.close()


def test_document_is_valid_openapi_31(served):
    crm, app, org = served
    api = Client(app, org["admin"]["token"])
    try:
        r = api.get("/api/v1/openapi.json")
        assert r.status_code == 200
        doc = r.json()
        assert Client(app).get("/api/v1/openapi.json").status_code == 401
    finally:
        api.close()
    assert doc["openapi"] == "3.1.0"
    schema = schemathesis.openapi.from_dict(doc)
    schema.validate()  # against the OpenAPI 3.1 meta-schema
    for component in doc["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(component)
    assert set(crm.catalog.names()) <= {p.split("/")[3] for p in doc["paths"]}


def test_schemas_follow_the_catalog(served):
    crm, app, org = served
    api = Client(app, org["admin"]["token"])
    doc = api.get("/api/v1/openapi.json").json()
    api.close()
    schemas = doc["components"]["schemas"]
    lead, create, update = schemas["Lead"], schemas["LeadCreate"], schemas["LeadUpdate"]
    assert lead["properties"]["last_name"]["maxLength"] == 100
    assert (
        lead["properties"]["status"]["enum"][:2] == ["new", "working"]
        and None in lead["properties"]["status"]["enum"]
    )
    assert lead["properties"]["annual_revenue"]["format"] == "decimal"
    assert lead["properties"]["annual_revenue"]["type"] == ["string", "null"]
    assert lead["properties"]["created_at"]["format"] == "date-time"
    assert lead["properties"]["email"]["format"] == "email"
    assert lead["properties"]["full_name"]["readOnly"] is True
    assert "full_name" not in create["properties"]  # computed: not writable
    assert create["required"] == ["last_name"] and create["additionalProperties"] is False
    assert create["properties"]["employees"]["minimum"] == 0
    assert "version" in update["properties"] and "required" not in update
    assert "password" not in schemas["User"]["properties"]
    assert schemas["UserCreate"]["properties"]["password"]["writeOnly"] is True
    assert schemas["DealStage"]["properties"]["probability"]
    assert schemas["Team"]["properties"]["members"]["items"]["properties"]["role"]["enum"][:2] == [
        "manager",
        "member",
    ]

    paths = doc["paths"]
    assert set(paths["/api/v1/lead"]) == {"get", "post"}
    assert {"get", "patch", "delete"} <= set(paths["/api/v1/lead/{id}"])
    params = {p["name"] for p in paths["/api/v1/lead"]["get"]["parameters"]}
    assert {"filter", "q", "sort", "cursor", "limit", "fields"} == params
    for entity in crm.catalog:  # `q` is offered exactly where there is a search index
        names = {p["name"] for p in paths[f"/api/v1/{entity.name}"]["get"]["parameters"]}
        assert ("q" in names) == ("search_text" in crm.table(entity.name).c)
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        **doc["components"]["securitySchemes"]["bearerAuth"],
        "type": "http",
        "scheme": "bearer",
    }
    assert doc["security"] == [{"bearerAuth": []}]
    assert paths["/api/v1/lead/{id}"]["patch"]["responses"]["409"]["$ref"].endswith("Conflict")
    assert "ErrorItem" in schemas and "Error" in schemas


def test_schemathesis_finds_no_server_errors(served):
    """Fuzz every lead and account operation (positive and negative data) as the admin."""
    crm, app, org = served
    auth = {"Authorization": f"Bearer {org[FUZZ_USER]['token']}"}
    schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", app, headers=auth)
    operations = [
        result.ok()
        for result in schema.get_all_operations()
        if result.ok().path.split("/")[3] in FUZZED_ENTITIES or FUZZED_ENTITIES == ["all"]
    ]
    assert len(operations) >= 5 * len(FUZZED_ENTITIES)
    started = time.monotonic()
    for operation in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                database=None,
                derandomize=DERANDOMIZE,
                suppress_health_check=list(HealthCheck),
            )
            def fuzz(case):
                response = case.call(headers=auth)
                case.validate_response(response, checks=[not_a_server_error])

            fuzz()
    if EXAMPLES_PER_OPERATION <= 40:
        assert time.monotonic() - started < 60
