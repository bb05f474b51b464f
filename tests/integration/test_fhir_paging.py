"""Searches larger than a page: the demo server pages as production servers do, and
FhirClient reads every page through the ``next`` links, refusing links that loop or lead
to another host."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from adapters.fhir import FhirClient, FhirPagingError

CODE_SYSTEM = "urn:careweave:test-paging"
DEFAULT_PAGE_SIZE = 20


def service_request(code: str, number: int) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "identifier": [{"system": "urn:careweave:test-paging-order", "value": f"{code}-{number}"}],
        "status": "active",
        "intent": "order",
        "subject": {"display": "test subject"},
        "code": {"coding": [{"system": CODE_SYSTEM, "code": code}]},
    }


async def write_service_requests(fhir: FhirClient, code: str, how_many: int) -> set[str]:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": service_request(code, number),
                "request": {"method": "POST", "url": "ServiceRequest"},
            }
            for number in range(how_many)
        ],
    }
    response = await fhir.transaction(bundle)
    return {entry["response"]["location"].split("/")[1] for entry in response["entry"]}


async def test_search_larger_than_a_page_finds_every_resource(fhir_base_url: str) -> None:
    code = uuid.uuid4().hex
    how_many = 2 * DEFAULT_PAGE_SIZE + 5
    async with FhirClient(fhir_base_url) as fhir:
        written = await write_service_requests(fhir, code, how_many)
        found = await fhir.search("ServiceRequest", {"code": f"{CODE_SYSTEM}|{code}"})
    assert len(written) == how_many
    assert sorted(resource["id"] for resource in found) == sorted(written)
    # What the client read through: the server's first page alone holds one page and says so.
    async with httpx.AsyncClient() as http:
        first_page = await http.get(
            f"{fhir_base_url}/ServiceRequest", params={"code": f"{CODE_SYSTEM}|{code}"}
        )
    first = first_page.json()
    assert (first["total"], len(first["entry"])) == (how_many, DEFAULT_PAGE_SIZE)
    assert [link["relation"] for link in first["link"]] == ["self", "first", "next"]


async def test_count_sets_the_page_size_not_the_result_size(fhir_base_url: str) -> None:
    code = uuid.uuid4().hex
    async with FhirClient(fhir_base_url) as fhir:
        written = await write_service_requests(fhir, code, 10)
        found = await fhir.search(
            "ServiceRequest", {"code": f"{CODE_SYSTEM}|{code}", "_count": "3"}
        )
    assert sorted(resource["id"] for resource in found) == sorted(written)


def test_pages_link_to_each_other_and_keep_the_search(fhir_base_url: str) -> None:
    code = uuid.uuid4().hex
    with httpx.Client(base_url=fhir_base_url + "/", timeout=30) as http:
        for number in range(5):
            created = http.post("ServiceRequest", json=service_request(code, number))
            assert created.status_code == 201
        middle = http.get(
            "ServiceRequest",
            params={"code": f"{CODE_SYSTEM}|{code}", "_count": "2", "_offset": "2"},
        ).json()
        links = {link["relation"]: httpx.URL(link["url"]) for link in middle["link"]}
        assert set(links) == {"self", "first", "previous", "next"}
        for url in links.values():
            assert url.params["code"] == f"{CODE_SYSTEM}|{code}"
        assert [links[relation].params["_offset"] for relation in ("previous", "next")] == [
            "0",
            "4",
        ]
        last = http.get(str(links["next"])).json()
    assert len(last["entry"]) == 1
    assert "next" not in {link["relation"] for link in last["link"]}


@pytest.mark.parametrize("bad", ["_count=-1", "_count=ten", "_offset=1.5", "_count=1&_count=2"])
def test_a_page_request_that_is_not_a_whole_number_is_refused(fhir_base_url: str, bad: str) -> None:
    response = httpx.get(f"{fhir_base_url}/ServiceRequest?{bad}")
    assert response.status_code == 400
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"] == [bad.split("=")[0]]


# A server whose paging is broken: each page's next link comes from `next_link`.
@pytest.fixture
def misbehaving_server() -> Iterator[Callable[[Callable[[str], str]], str]]:
    servers: list[ThreadingHTTPServer] = []

    def start(next_link: Callable[[str], str]) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                base = f"http://127.0.0.1:{self.server.server_address[1]}/fhir"
                page = {
                    "resourceType": "Bundle",
                    "type": "searchset",
                    "link": [
                        {"relation": "self", "url": base + self.path.removeprefix("/fhir")},
                        {"relation": "next", "url": next_link(base)},
                    ],
                    "entry": [{"resource": {"resourceType": "Patient", "id": "p"}}],
                }
                body = json.dumps(page).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/fhir"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


async def test_a_next_link_back_to_a_page_already_read_is_an_error(
    misbehaving_server: Callable[[Callable[[str], str]], str],
) -> None:
    base_url = misbehaving_server(lambda base: f"{base}/Patient?page=2")
    async with FhirClient(base_url) as fhir:
        with pytest.raises(FhirPagingError, match="leads back to a page already read"):
            await fhir.search("Patient", {"page": "1"})


async def test_endless_pages_stop_at_the_bound(
    misbehaving_server: Callable[[Callable[[str], str]], str],
) -> None:
    fresh = iter(range(1_000_000))
    base_url = misbehaving_server(lambda base: f"{base}/Patient?page={next(fresh)}")
    async with FhirClient(base_url) as fhir:
        with pytest.raises(FhirPagingError, match="more than 5 pages"):
            await fhir.search("Patient", {}, max_pages=5)


async def test_a_next_link_to_another_host_is_not_followed(
    misbehaving_server: Callable[[Callable[[str], str]], str],
) -> None:
    base_url = misbehaving_server(lambda base: "http://127.0.0.2:9/fhir/Patient?page=2")
    async with FhirClient(base_url, headers={"Authorization": "Bearer secret"}) as fhir:
        with pytest.raises(FhirPagingError, match="leads off its base URL"):
            await fhir.search("Patient", {})
