import { Metadata, status } from '@grpc/grpc-js';
import { propagation, trace } from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { expect } from 'chai';
import { call, callError, newTenant, newUser, threadClient } from '../support/clients.js';

describe('tracing: an OpenTelemetry server span per call, when an SDK is registered', () => {
  const exporter = new InMemorySpanExporter();
  before(() => {
    trace.setGlobalTracerProvider(new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] }));
    propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  });
  after(() => {
    trace.disable();
    propagation.disable();
  });

  it('names the span after the method, continues the caller’s trace and records the gRPC code', async () => {
    const threads = threadClient();
    try {
      const user = await newUser(newTenant(), 'patient');
      const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
      const md: Metadata = user.md.clone();
      md.set('traceparent', `00-${traceId}-00f067aa0ba902b7-01`);
      md.set('x-request-id', 'req-traced-1');
      await call(threads, threads.listThreads, { pageSize: 0, pageToken: '', state: 0 }, md);
      const err = await callError(call(threads, threads.getThread, { threadId: 'nope' }, user.md));
      expect(err.code).to.equal(status.INVALID_ARGUMENT);
      const spans = exporter.getFinishedSpans();
      const listed = spans.find((s) => s.attributes['comms.request_id'] === 'req-traced-1');
      expect(listed?.name).to.equal('comms.v1.ThreadService/ListThreads');
      expect(listed?.spanContext().traceId).to.equal(traceId);
      expect(listed?.parentSpanContext?.spanId).to.equal('00f067aa0ba902b7');
      expect(listed?.attributes).to.include({
        'rpc.system': 'grpc',
        'rpc.method': 'ListThreads',
        'rpc.grpc.status_code': 0,
      });
      const failed = spans.find((s) => s.name === 'comms.v1.ThreadService/GetThread');
      expect(failed?.attributes['rpc.grpc.status_code']).to.equal(status.INVALID_ARGUMENT);
      expect(failed?.status.code).to.equal(2); // SpanStatusCode.ERROR
    } finally {
      threads.close();
    }
  });
});
