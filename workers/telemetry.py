"""OpenTelemetry set-up: one trace per message, gateway -> workflow -> activities -> FHIR.

Span attributes carry message types, ack codes and workflow ids only: no PHI.
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)

from models.settings import Settings

_configured = False


def configure_tracing(settings: Settings, service_name: str = "careweave") -> None:
    """Install the tracer provider once per process; exporter chosen by CAREWEAVE_OTEL_EXPORTER."""
    global _configured
    if _configured:
        return
    _configured = True
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    exporter: SpanExporter | None = None
    if settings.otel_exporter == "console":
        exporter = ConsoleSpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif settings.otel_exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = (
            OTLPSpanExporter(endpoint=settings.otel_otlp_endpoint)
            if (settings.otel_otlp_endpoint)
            else OTLPSpanExporter()
        )
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
