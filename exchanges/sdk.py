"""The exchange SDK: what an exchange declares once, and the registry everything else reads.

An exchange is one kind of clinical conversation (order-to-result, discharge sync, ...).
It declares, in one ``ExchangeSpec``: the HL7 v2 messages it accepts and the segments
they need, how a message finds its workflow (``route``), the workflow class and the
signals it is started with (method references, never strings), its start input, its
activities with the audit action of each, its summary text and its search attributes.
Shared steps that several exchanges compose (ordered delivery) declare the same worker
side in a ``StepSpec``.

The gateway's supported types and AR 200/201 answers, the committer, the worker's
workflows and activities, the audit interceptor, the Temporal search attributes and
``careweave exchanges`` all derive from an ``ExchangeRegistry``; nothing lists exchanges
by hand, so a message type nobody registered is refused instead of falling through.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel
from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.common import SearchAttributeKey

from adapters.fhir import FhirClient
from adapters.hl7v2.fields import Segment
from adapters.hl7v2.header import DecodedMessage, MessageHeader, MessageRejected

# Re-exported: workflow ids, tests and the CLI take it from here.
from adapters.pseudonyms import pseudonym as pseudonym
from models.audit import AuditAction
from models.destinations import RoutingConfig
from models.errors import ConfigurationError, EngineError
from models.search import BusinessKeyKind, BusinessKeys
from models.settings import Settings
from workflows import search_attributes as sa

# HL7 versions the gateway accepts, whatever the exchange (each admits its point releases).
SUPPORTED_VERSIONS = frozenset(
    {"2.2", "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8", "2.8.1", "2.8.2"}
)
# Every exchange's start sets these (ExchangeCommitter), so every exchange declares them.
START_SEARCH_ATTRIBUTES: tuple[SearchAttributeKey[Any], ...] = (
    sa.EXCHANGE,
    sa.FACILITY,
    sa.MESSAGE_TYPE,
    sa.EXCHANGE_STATUS,
    *sa.BUSINESS_KEYS,
)
# Registered although no start sets them: LEGACY_STATUS for runs started before the rename,
# REVIEW_STATE, REVIEW_REASON and REVIEW_REQUESTED_AT by the review gate (workflows/review.py)
# of any reviewable workflow.
_ALWAYS_REGISTERED: tuple[SearchAttributeKey[Any], ...] = (
    sa.LEGACY_STATUS,
    sa.REVIEW_STATE,
    sa.REVIEW_REASON,
    sa.REVIEW_REQUESTED_AT,
)
# Bounds on what one message adds to the business keys (a PID-3 with many repetitions, an
# OML with many OBRs); workflows/exchange_search.py bounds what a run accumulates.
_MAX_PATIENT_IDS = 4
_MAX_ORDER_KEYS = 12
_MAPPINGS_HOME = Path(__file__).resolve().parent.parent / "mappings"
_MAPPING_FILE_VERSION = re.compile(r"\.(v[0-9]+)\.[a-z]+$")
_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]+")

Key = TypeVar("Key")


class ExchangeDefinitionError(ConfigurationError):
    """An exchange or step is declared wrongly (found at import or at worker start)."""


class CommitError(EngineError):
    """The engine could not durably accept the message; the sender must not get AA."""


@dataclass(frozen=True)
class MessageType:
    """HL7 v2 messages an exchange accepts: MSH-9.1, its MSH-9.2 events, required segments.

    A missing required segment is answered AE naming the segment (HL7 0357 code 100).
    """

    code: str
    events: tuple[str, ...]
    required_segments: tuple[str, ...] = ()

    def names(self) -> list[str]:
        return [f"{self.code}^{event}" for event in self.events]


@dataclass(frozen=True)
class RoutingContext:
    """What a routing function may use besides the message: the pseudonym key (ids are keyed
    HMACs of identifiers, never the identifiers)."""

    pseudonym_key: bytes = b""


@dataclass(frozen=True)
class Route(Generic[Key]):
    """Where a message goes: a signal-with-start on one exchange's workflow.

    ``key`` holds the exchange's business keys (pseudonyms, order numbers) for its start
    input; ``workflow_id`` and ``facility`` carry no PHI.
    """

    exchange: str
    workflow_id: str
    signal: Callable[..., Any]
    facility: str
    key: Key
    # Pseudonyms of the message's business keys, for the search attributes (set by
    # ExchangeRegistry.route for every exchange).
    business_keys: BusinessKeys = field(default_factory=BusinessKeys)
    # The id this exchange had before its ids became pseudonyms (lab orders: the placer
    # number in clear). A run under it still takes the message (ExchangeCommitter).
    legacy_workflow_id: str | None = None


@dataclass
class WorkerDependencies:
    """What activity factories are given by the worker. ``on_close`` collects the
    callbacks that release what a factory opened (connections), run when the worker ends."""

    client: Client
    settings: Settings
    # The lab-result FHIR server (CAREWEAVE_FHIR_*), owned by the caller of the worker.
    fhir: FhirClient
    routing: RoutingConfig
    on_close: contextlib.AsyncExitStack


ActivityFactory = Callable[[WorkerDependencies], Sequence[Callable[..., Any]]]


@dataclass(frozen=True)
class StepSpec:
    """A shared step's worker side (ordered delivery): workflows, activities, audit actions."""

    name: str
    workflows: tuple[type, ...]
    activities: ActivityFactory
    # Activity (function or unbound method, as decorated) -> the audit action of a success.
    audit_actions: Mapping[Callable[..., Any], AuditAction]
    search_attributes: tuple[SearchAttributeKey[Any], ...]


@dataclass(frozen=True)
class ExchangeSpec(Generic[Key]):
    """One exchange, declared once. ``name`` is kebab-case ("order-to-result"); its homes
    are ``workflows/<home>.py``, ``activities/<home>.py``, ``mappings/<home>/`` and
    ``exchanges/<home>.py`` with ``home`` the snake_case name."""

    name: str
    accepts: tuple[MessageType, ...]
    route: Callable[[DecodedMessage, RoutingContext], Route[Key]]
    workflow: type
    # Signals a route may name: every one must be a signal of ``workflow``.
    signals: tuple[Callable[..., Any], ...]
    start_input: Callable[[Route[Key], Settings], BaseModel]
    activities: ActivityFactory
    audit_actions: Mapping[Callable[..., Any], AuditAction]
    # The Temporal UI's summary of an execution; ``{facility}`` is filled in. No PHI.
    summary: str
    search_attributes: tuple[SearchAttributeKey[Any], ...]
    # The mapping version new exchanges start on (running ones keep theirs).
    mapping_version: str
    updates: tuple[Callable[..., Any], ...] = ()
    extra_workflows: tuple[type, ...] = field(default=())
    # For a message type another exchange accepts too: this exchange takes the messages
    # this says are its own (imaging orders among ORM^O01), the exchange without ``claims``
    # the rest. A pure function of the message (no I/O: the gateway calls it per message).
    claims: Callable[[DecodedMessage], bool] | None = None

    @property
    def home(self) -> str:
        return self.name.replace("-", "_")

    @property
    def workflows(self) -> tuple[type, ...]:
        return (self.workflow, *self.extra_workflows)

    def mapping_versions(self) -> list[str]:
        """Versions found among the exchange's mapping files (``name.vN.toml`` / ``.csv``)."""
        folder = _MAPPINGS_HOME / self.home
        found = {
            match.group(1)
            for path in folder.glob("*.v*.*")
            if (match := _MAPPING_FILE_VERSION.search(path.name))
        }
        return sorted(found, key=lambda version: int(version[1:]))


def workflow_type_name(workflow_class: type) -> str:
    name = workflow._Definition.must_from_class(workflow_class).name
    if not name:
        raise ExchangeDefinitionError(f"{workflow_class.__name__} is a dynamic workflow")
    return name


def signal_name(signal: Callable[..., Any]) -> str:
    return workflow._SignalDefinition.must_name_from_fn_or_str(signal)


def update_name(update: Callable[..., Any]) -> str:
    name, _ = workflow._UpdateDefinition.get_name_and_result_type(update)
    return name


def activity_name(fn: Callable[..., Any]) -> str:
    name = activity._Definition.must_from_callable(fn).name
    if not name:
        raise ExchangeDefinitionError(f"{fn.__qualname__} is a dynamic activity")
    return name


def id_part(value: str) -> str:
    """A workflow-id segment: order numbers and facility codes contain '/', '^' or spaces."""
    cleaned = _UNSAFE_ID_CHARS.sub("_", value.strip()).strip("_")
    return cleaned[:64] or "unknown"


def search_pseudonym(key: bytes, kind: BusinessKeyKind, value: str) -> str:
    """The pseudonym a business key has in the PatientKey / OrderKey / MessageKey search
    attributes: the same keyed HMAC as workflow ids, over the kind and the value only.

    Only what a user can type goes in, so the search box computes the same pseudonym from
    an MRN, a visit, order or accession number or an MSH-10 alone. The assigning authority
    (CX-4) and the facility stay out on purpose: users rarely know CX-4 (the routing key
    ``patient_pseudonym`` uses it, so it cannot serve search), and a search narrowed to one
    facility filters on the Facility attribute instead. The kind goes in so that a visit
    number equal to some order number finds only visits. Surrounding spaces are dropped
    (HL7 senders pad, users paste); case is kept, identifiers are case-sensitive.
    """
    return pseudonym(key, "search", kind.value, value.strip())


def read_business_keys(message: DecodedMessage, key: bytes) -> BusinessKeys:
    """Pseudonyms of what a user may later search this message by: every PID-3 identifier
    (CX-1 of each repetition), the placer and filler order numbers of every ORC and OBR,
    the accession (OBR-18), the visit number (PV1-19) and the control id (MSH-10).

    OBR-18 (placer field 1) is where radiology senders put the accession number (IHE
    scheduled workflow); the lab mapping reads no accession, a lab's is its filler number.
    """

    def values(segment_id: str, position: int, *, every_repetition: bool = False) -> list[str]:
        found: list[str] = []
        for text in message.segments_named(segment_id):
            segment = Segment(text, message.delimiters)
            for occurrence in range(1, (_MAX_PATIENT_IDS if every_repetition else 1) + 1):
                value = segment.value(position, 1, occurrence).strip()
                if value:
                    found.append(value)
        return found

    def pseudonyms(pairs: list[tuple[BusinessKeyKind, str]], limit: int) -> tuple[str, ...]:
        unique = dict.fromkeys(search_pseudonym(key, kind, value) for kind, value in pairs)
        return tuple(unique)[:limit]

    order_pairs = [
        (kind, value)
        for kind, fields in (
            (BusinessKeyKind.PLACER, (("ORC", 2), ("OBR", 2))),
            (BusinessKeyKind.FILLER, (("ORC", 3), ("OBR", 3))),
            (BusinessKeyKind.ACCESSION, (("OBR", 18),)),
            (BusinessKeyKind.VISIT, (("PV1", 19),)),
        )
        for segment_id, position in fields
        for value in values(segment_id, position)
    ]
    patient_pairs = [
        (BusinessKeyKind.MRN, value) for value in values("PID", 3, every_repetition=True)
    ]
    control_id = message.header.control_id.strip()
    return BusinessKeys(
        patient=pseudonyms(patient_pairs, _MAX_PATIENT_IDS),
        order=pseudonyms(order_pairs, _MAX_ORDER_KEYS),
        message=(search_pseudonym(key, BusinessKeyKind.CONTROL_ID, control_id),)
        if control_id
        else (),
    )


def patient_pseudonym(message: DecodedMessage, context: RoutingContext) -> str:
    """The patient's key in workflow ids: a pseudonym of PID-3 (first repetition) with the
    authority that assigned it (CX-4, else MSH-4), so two facilities' equal numbers differ.

    Raises MessageRejected (AE 101) when PID-3 is empty: such a message cannot be ordered
    per patient.
    """
    patient_id = message.field("PID", 3)
    if not patient_id:
        raise structure_error(
            message,
            "PID",
            3,
            "no patient identifier (PID-3): the event cannot be ordered per patient",
            "101",
        )
    authority = message.field("PID", 3, component=4) or message.header.sending_facility
    return pseudonym(context.pseudonym_key, "patient", authority, patient_id)


def structure_error(
    message: DecodedMessage, segment_id: str, position: int | None, text: str, code: str = "100"
) -> MessageRejected:
    """An AE naming the segment and field a routing function could not do without."""
    return MessageRejected(
        ack_code="AE",
        error_code=code,
        segment_id=segment_id,
        segment_sequence=1,
        field_position=position,
        text=text,
        header=message.header,
    )


def _unsupported(header: MessageHeader, error_code: str, what: str) -> MessageRejected:
    return MessageRejected(
        ack_code="AR",
        error_code=error_code,
        segment_id="MSH",
        segment_sequence=1,
        field_position=9,
        text=f"MSH-9 {what} is not supported on this interface",
        header=header,
    )


class ExchangeRegistry:
    """The exchanges and shared steps of one Careweave, checked when it is built.

    Raises ExchangeDefinitionError when two exchanges claim the same message, when a name
    repeats, or when a declared signal, update or workflow is not one.
    """

    def __init__(
        self, exchanges: Sequence[ExchangeSpec[Any]], shared_steps: Sequence[StepSpec] = ()
    ) -> None:
        self.exchanges: tuple[ExchangeSpec[Any], ...] = tuple(exchanges)
        self.shared_steps: tuple[StepSpec, ...] = tuple(shared_steps)
        self._by_name: dict[str, ExchangeSpec[Any]] = {}
        # Per message type: the exchange taking what no claim takes, and the claiming ones.
        self._by_message: dict[tuple[str, str], ExchangeSpec[Any]] = {}
        self._claims: dict[tuple[str, str], list[ExchangeSpec[Any]]] = {}
        names = [spec.name for spec in self.exchanges] + [s.name for s in self.shared_steps]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ExchangeDefinitionError(f"exchange names registered twice: {repeated}")
        for spec in self.exchanges:
            self._by_name[spec.name] = spec
            self._check_handlers(spec)
            for message_type in spec.accepts:
                for event in message_type.events:
                    if spec.claims is not None:
                        self._claims.setdefault((message_type.code, event), []).append(spec)
                        continue
                    claimed = self._by_message.get((message_type.code, event))
                    if claimed is not None:
                        raise ExchangeDefinitionError(
                            f"{message_type.code}^{event} is claimed by both {claimed.name} "
                            f"and {spec.name}"
                        )
                    self._by_message[(message_type.code, event)] = spec
            missing = [k.name for k in START_SEARCH_ATTRIBUTES if k not in spec.search_attributes]
            if missing:
                raise ExchangeDefinitionError(
                    f"{spec.name}: search_attributes lacks {missing}, which every start sets"
                )

        events: dict[str, set[str]] = {}
        for code, event in [*self._by_message, *self._claims]:
            events.setdefault(code, set()).add(event)
        # MSH-9.1 -> accepted MSH-9.2 events, for the gateway's AR 200/201 answers.
        self.supported_types: dict[str, frozenset[str]] = {
            code: frozenset(found) for code, found in events.items()
        }
        # "CODE^EVENT" -> segments without which the exchange cannot take the message (the
        # gateway checks them before routing: a shared type's claiming exchanges need what
        # the default one needs, or more only when the message type is theirs alone).
        self.required_segments: dict[str, tuple[str, ...]] = {}
        for spec in sorted(self.exchanges, key=lambda s: s.claims is None):
            for message_type in spec.accepts:
                for name in message_type.names():
                    self.required_segments[name] = message_type.required_segments

    @staticmethod
    def _check_handlers(spec: ExchangeSpec[Any]) -> None:
        try:
            definition = workflow._Definition.must_from_class(spec.workflow)
        except (TypeError, ValueError) as err:
            raise ExchangeDefinitionError(f"{spec.name}: {err}") from err
        for signal in spec.signals:
            name = signal_name(signal)
            if name not in definition.signals:
                raise ExchangeDefinitionError(
                    f"{spec.name}: {name!r} is not a signal of {definition.name}"
                )
        for update in spec.updates:
            name = update_name(update)
            if name not in definition.updates:
                raise ExchangeDefinitionError(
                    f"{spec.name}: {name!r} is not an update of {definition.name}"
                )

    # -- the gateway's side ---------------------------------------------------------

    def exchange(self, name: str) -> ExchangeSpec[Any]:
        return self._by_name[name]

    def exchange_for(self, header: MessageHeader) -> ExchangeSpec[Any]:
        """The exchange of MSH-9 (the one without a claim when several share it); AR 200
        (type) or 201 (event) when none is registered."""
        key = (header.message_code, header.trigger_event)
        spec = self._by_message.get(key) or next(iter(self._claims.get(key, [])), None)
        if spec is not None:
            return spec
        if header.message_code in self.supported_types:
            raise _unsupported(header, "201", "trigger event")
        raise _unsupported(header, "200", "message type")

    def exchange_of(self, message: DecodedMessage) -> ExchangeSpec[Any]:
        """The exchange of this message: the first (in registration order) whose ``claims``
        takes it, else the one of its MSH-9 without a claim."""
        header = message.header
        for spec in self._claims.get((header.message_code, header.trigger_event), []):
            assert spec.claims is not None
            if spec.claims(message):
                return spec
        default = self._by_message.get((header.message_code, header.trigger_event))
        return default if default is not None else self.exchange_for(header)

    def route(self, message: DecodedMessage, *, pseudonym_key: bytes = b"") -> Route[Any]:
        """Raises MessageRejected: AR 200/201 for an unregistered message, AE for a message
        its exchange cannot key (no order number, no patient identifier, ...)."""
        spec = self.exchange_of(message)
        found = spec.route(message, RoutingContext(pseudonym_key=pseudonym_key))
        if found.exchange != spec.name or found.signal not in spec.signals:
            raise ExchangeDefinitionError(
                f"{spec.name}: its route named exchange {found.exchange!r} or a signal it "
                "did not declare"
            )
        if not pseudonym_key:
            return found
        return dataclasses.replace(found, business_keys=read_business_keys(message, pseudonym_key))

    # -- the worker's side ----------------------------------------------------------

    def _parts(self) -> list[ExchangeSpec[Any] | StepSpec]:
        return [*self.exchanges, *self.shared_steps]

    def workflows(self) -> list[type]:
        found: list[type] = []
        for spec in self.exchanges:
            found += [w for w in spec.workflows if w not in found]
        for step in self.shared_steps:
            found += [w for w in step.workflows if w not in found]
        return found

    def audit_actions(self) -> dict[str, AuditAction]:
        """Activity type name -> audit action, over every exchange and shared step."""
        actions: dict[str, AuditAction] = {}
        for part in self._parts():
            for fn, action in part.audit_actions.items():
                actions[activity_name(fn)] = action
        return actions

    def activities(self, dependencies: WorkerDependencies) -> list[Callable[..., Any]]:
        """Every activity the exchanges and steps make, each with a declared audit action.

        Raises ExchangeDefinitionError naming an activity with no audit action (an
        activity nobody classified would be audited as something it is not).
        """
        made: list[Callable[..., Any]] = []
        names: set[str] = set()
        actions = self.audit_actions()
        for part in self._parts():
            for fn in part.activities(dependencies):
                name = activity_name(fn)
                if name not in actions:
                    raise ExchangeDefinitionError(
                        f"{part.name}: activity {name!r} has no audit action "
                        "(declare it in audit_actions)"
                    )
                if name not in names:
                    names.add(name)
                    made.append(fn)
        return made

    def search_attributes(self) -> list[SearchAttributeKey[Any]]:
        keys: list[SearchAttributeKey[Any]] = []
        for part in self._parts():
            keys += [key for key in part.search_attributes if key not in keys]
        keys += [key for key in _ALWAYS_REGISTERED if key not in keys]
        return keys

    def dev_server_args(self) -> list[str]:
        """`temporal server start-dev` flags that register every search attribute."""
        args: list[str] = []
        for key in self.search_attributes():
            args += ["--search-attribute", f"{key.name}={search_attribute_type(key)}"]
        return args


def search_attribute_type(key: SearchAttributeKey[Any]) -> str:
    """The type name `temporal` and Temporal's operator API use ("Keyword", "KeywordList")."""
    return "".join(word.capitalize() for word in key.indexed_value_type.name.split("_"))
