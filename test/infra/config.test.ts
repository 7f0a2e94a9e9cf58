import { expect } from 'chai';
import { ConfigError, DEV_JWT_SECRET, loadConfig } from '../../src/infra/config/config.js';

describe('config', () => {
  it('starts with defaults and the development secret outside production', () => {
    const config = loadConfig({});
    expect(config.port).to.equal(50051);
    expect(config.databaseUrl).to.equal(undefined);
    expect(config.jwt.secret).to.equal(DEV_JWT_SECRET);
    expect(config.grpc.maxReceiveBytes).to.equal(1024 * 1024);
  });

  it('names every bad variable with what is wrong, all at once', () => {
    let error: unknown;
    try {
      loadConfig({
        PORT: '70000',
        DATABASE_URL: 'mysql://db/x',
        DB_POOL_MAX: 'lots',
        JWT_SECRET: 'short',
        GRPC_MAX_RECEIVE_BYTES: '12',
      });
    } catch (err) {
      error = err;
    }
    expect(error).to.be.instanceOf(ConfigError);
    const problems = (error as ConfigError).problems.join('\n');
    expect(problems).to.match(/PORT: must be between 0 and 65535/);
    expect(problems).to.match(/DATABASE_URL: must use the postgres:\/\/ scheme/);
    expect(problems).to.match(/DB_POOL_MAX: must be a whole number/);
    expect(problems).to.match(/JWT_SECRET: must be at least 32 characters/);
    expect(problems).to.match(/GRPC_MAX_RECEIVE_BYTES: must be between 1024/);
  });

  it('refuses production without a JWT key, and both kinds of key at once', () => {
    expect(() => loadConfig({ NODE_ENV: 'production' })).to.throw(ConfigError, /JWT_SECRET or JWT_JWKS_URL/);
    expect(() => loadConfig({ JWT_SECRET: 'y'.repeat(32), JWT_JWKS_URL: 'https://idp.example/jwks.json' })).to.throw(
      ConfigError,
      /set one, not both/,
    );
  });

  it('refuses a database URL without a database name', () => {
    expect(() => loadConfig({ DATABASE_URL: 'postgres://localhost:5432' })).to.throw(ConfigError, /name a database/);
  });
});
