import {
  credentials,
  loadPackageDefinition,
  type Client,
  type GrpcObject,
  type ServiceClientConstructor,
} from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { protoPath as healthProtoPath } from 'grpc-health-check';
import { env } from './hooks.js';

type HealthClient = Client & {
  check(req: { service: string }, cb: (err: Error | null, res: { status: string }) => void): void;
};

/** A grpc.health.v1 client built from the health proto, as any external prober would. */
export function healthClient(address = env.address): HealthClient {
  const pkg = loadPackageDefinition(loadSync(healthProtoPath, { enums: String })) as GrpcObject;
  const Health = ((pkg.grpc as GrpcObject).health as GrpcObject).v1 as GrpcObject;
  return new (Health.Health as ServiceClientConstructor)(
    address,
    credentials.createInsecure(),
  ) as unknown as HealthClient;
}

export function checkHealth(client: HealthClient, service = ''): Promise<string> {
  return new Promise((resolve, reject) =>
    client.check({ service }, (err, res) => (err ? reject(err) : resolve(res.status))),
  );
}
