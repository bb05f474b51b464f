"""Coverage-guided fuzzing (atheris, libFuzzer) of the MLLP decoder and the HL7 fast path.

`make test` runs it for 15 s (tests/unit/test_fuzz_atheris.py, where atheris installs:
it is a dev dependency on Linux x86_64) beside the hypothesis properties of
tests/unit/test_fuzz_hl7.py. Run it for as long as you like, seeded with the corpus, e.g.
for five minutes (libFuzzer adds the inputs it finds to the FIRST folder given: a scratch
folder, never the checked-in corpus):

    mkdir -p .state/fuzz
    python fuzz/fuzz_mllp_hl7.py -max_total_time=300 .state/fuzz tests/fixtures/corpus/*/

A crash is any exception other than the parsers' declared refusals; libFuzzer writes the
input that caused it to ./crash-<sha1> so it can be replayed (`python fuzz/... crash-...`).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from adapters.hl7v2.adt_messages import AdtMessageInvalid, parse_adt_event
    from adapters.hl7v2.framing import Frame, MllpDecoder
    from adapters.hl7v2.header import MessageRejected, decode_message
    from adapters.hl7v2.lab_messages import LabMessageInvalid, parse_lab_orders, parse_lab_results

# The registry pulls in Temporal and every exchange's workflows: imported uninstrumented, so
# the coverage map stays on the framer, the fast path and the parsers.
from exchanges.registry import REGISTRY
from exchanges.sdk import SUPPORTED_VERSIONS

_PARSERS = {
    "ORU": parse_lab_results,
    "ORM": parse_lab_orders,
    "OML": parse_lab_orders,
    "ADT": parse_adt_event,
}


def _decode_in_chunks(data: bytes, chunk: int) -> list[Frame]:
    decoder = MllpDecoder(4096)
    items = []
    for start in range(0, len(data), chunk):
        items += decoder.feed(data[start : start + chunk])
    items += decoder.close()
    return [item for item in items if isinstance(item, Frame)]


def test_one_input(data: bytes) -> None:
    # Framing: the same frames whatever the reads.
    frames = _decode_in_chunks(data, len(data) or 1)
    if frames != _decode_in_chunks(data, 1 + (data[0] % 7 if data else 0)):
        raise AssertionError("framing depends on how the stream was read")
    # The fast path: the whole input as one frame's payload, then the exchange's parser.
    try:
        message = decode_message(
            data,
            supported_types=REGISTRY.supported_types,
            supported_versions=SUPPORTED_VERSIONS,
            fallback_charset="iso-8859-1",
            required_segments=REGISTRY.required_segments,
        )
        REGISTRY.route(message, pseudonym_key=b"fuzz")
    except MessageRejected:
        return
    parse = _PARSERS.get(message.header.message_code)
    if parse is not None:
        try:
            parse(message.text)
        except (LabMessageInvalid, AdtMessageInvalid):
            pass


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
