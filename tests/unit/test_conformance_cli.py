"""`careweave validate` on corpus files: OK, errors with line/segment/field, exit codes."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from workers.cli import app

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "corpus"
runner = CliRunner()


def validate(*names: str) -> tuple[int, str]:
    result = runner.invoke(app, ["validate", *(str(CORPUS / name) for name in names)])
    return result.exit_code, re.sub(r"\s+", " ", result.output)


def test_a_conforming_message_is_ok_and_exits_0() -> None:
    code, output = validate("results/oru-r01-nist-1.hl7", "adversarial/crlf-separators.hl7")
    assert code == 0, output
    assert output.count(": OK") == 2
    assert "error" not in output


def test_errors_name_line_segment_and_field_and_exit_1() -> None:
    code, output = validate("adversarial/pid-only-repetitions-pythonhl7-1.hl7")
    assert code == 1
    assert "3 error(s)" in output
    assert "line 2, PID-5: Missing required child PID.PID_5" in output
    # an ORU with no OBR/OBX: what only the whole structure shows goes on the MSH line
    assert "line 1, message: Missing required child" in output
    assert "ORU_R01_ORDER_OBSERVATION" in output


def test_a_field_error_is_on_the_line_of_its_own_segment() -> None:
    # Cerner's OBX-7 carries components in an ST field; that OBX is on line 7 of the file.
    code, output = validate("results/oru-r01-cerner-1.hl7")
    assert code == 1
    assert "line 7, OBX-7:" in output


def test_an_unknown_structure_is_an_error_on_msh_9() -> None:
    code, output = validate("adversarial/unknown-message-type.hl7")
    assert code == 1
    assert "MSH-9: no message structure ZZZ_Z01" in output


def test_each_message_of_a_file_is_reported_from_its_own_line() -> None:
    code, output = validate("adversarial/oml-o21-hapi-multimessage-1.hl7")
    starts = [int(n) for n in re.findall(r"oml-o21-hapi-multimessage-1\.hl7:(\d+) ", output)]
    assert starts[:4] == [1, 13, 24, 37]
    assert len(starts) >= 8
    assert code == 1  # some of them lack required segments


def test_unreadable_input_names_the_file_and_line() -> None:
    code, output = validate("adversarial/no-msh.hl7", "adversarial/latin1-bytes-undeclared.hl7")
    assert code == 1
    assert "no-msh.hl7: line 1: no MSH segment" in output
    assert "latin1-bytes-undeclared.hl7: line 3: byte 0xd1 is not UTF-8" in output
    code, output = validate("no/such/file.hl7")
    assert code == 1
    assert "file.hl7: line 1: cannot read" in output


def test_a_declared_latin1_file_and_a_bom_are_read() -> None:
    code, output = validate(
        "adversarial/latin1-bytes-declared-8859-1.hl7",
        "adversarial/adt-a01-fhirconverter-bom-1.hl7",
    )
    assert (code, output.count(": OK")) == (0, 2), output
