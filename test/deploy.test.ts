/**
 * The container files, checked without a Docker engine: the Dockerfile parsed
 * (dockerfile-ast) and held to what charla needs at run time, compose.yaml
 * validated against the Compose Specification's JSON schema (as shipped in
 * the `dclint` package) and held to charla's own configuration schema, and the
 * HAProxy configuration the README shows being the one compose runs.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import Ajv from 'ajv';
import { type Copy, DockerfileParser, type From, Keyword } from 'dockerfile-ast';
import { parse } from 'yaml';
import { loadConfig } from '../src/config.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const read = (file: string) => readFileSync(join(ROOT, file), 'utf8');
const SECRET = 'a-secret-for-the-compose-test-of-at-least-32-bytes';

describe('Dockerfile', () => {
  const dockerfile = DockerfileParser.parse(read('Dockerfile'));
  const instructions = dockerfile.getInstructions();
  const froms = dockerfile.getFROMs();
  /** The instructions of each stage, by stage name. */
  const stages = new Map<string, typeof instructions>();
  let current: typeof instructions = [];
  for (const i of instructions) {
    if (i.getKeyword() === Keyword.FROM) {
      current = [];
      stages.set((i as From).getBuildStage() ?? String(stages.size), current);
    }
    current.push(i);
  }
  const runtime = [...stages.values()].at(-1) ?? [];
  const of = (stage: typeof instructions, k: Keyword) => stage.filter((i) => i.getKeyword() === k);
  const args = (i: (typeof instructions)[number]) => i.getArguments().map((a) => a.getValue());
  const env = new Map<string, string>();
  for (const i of of(runtime, Keyword.ENV)) {
    const a = args(i);
    for (const pair of a) {
      const [name, value] = pair.split('=') as [string, string];
      env.set(name, value);
    }
  }

  it('parses into known instructions only, each with arguments', () => {
    const known = new Set<string>(Object.values(Keyword));
    assert.ok(instructions.length > 10);
    for (const i of instructions) {
      assert.ok(known.has(i.getKeyword()), `unknown instruction ${i.getKeyword()}`);
      assert.ok(i.getArguments().length > 0, `${i.getKeyword()} without arguments`);
    }
  });

  it('is multi-stage on node:20-slim: build, then runtime', () => {
    assert.deepEqual(
      froms.map((f) => [f.getImageName(), f.getImageTag(), f.getBuildStage()]),
      [
        ['node', '20-slim', 'build'],
        ['node', '20-slim', 'runtime'],
      ],
    );
    const build = stages.get('build') ?? [];
    const runs = of(build, Keyword.RUN).map((i) => i.getArgumentsContent() ?? '');
    assert.ok(runs.some((r) => /python3/.test(r) && /make/.test(r) && /g\+\+/.test(r)));
    assert.ok(
      runs.some((r) => /tsc -p tsconfig\.json/.test(r)),
      'the build stage compiles',
    );
    assert.ok(
      runs.some((r) => /npm prune --omit=dev/.test(r)),
      'only production packages ship',
    );
  });

  it('runs as a non-root user, after the last RUN', () => {
    const users = of(runtime, Keyword.USER);
    assert.equal(users.length, 1);
    const user = args(users[0] as (typeof instructions)[number])[0];
    assert.ok(user && !['root', '0'].includes(user.split(':')[0] as string), `USER ${user}`);
    const lastRun = of(runtime, Keyword.RUN).at(-1);
    assert.ok(
      lastRun === undefined || runtime.indexOf(lastRun) < runtime.indexOf(users[0] as never),
    );
  });

  it('checks health on /healthz at the port it exposes, and keeps SQLite in a volume', () => {
    const health = of(runtime, Keyword.HEALTHCHECK);
    assert.equal(health.length, 1);
    assert.match(health[0]?.getArgumentsContent() ?? '', /CMD .*\/healthz/);
    assert.deepEqual(args(of(runtime, Keyword.EXPOSE)[0] as never), [env.get('PORT')]);
    assert.equal(env.get('HOST'), '0.0.0.0', 'reachable from outside the container');
    const db = env.get('DATABASE_URL') ?? '';
    assert.match(db, /^sqlite:\//);
    const volumes = of(runtime, Keyword.VOLUME).flatMap((v) =>
      (v.getArgumentsContent() ?? '').replace(/[[\]"]/g, '').split(/[\s,]+/),
    );
    assert.ok(volumes.includes(dirname(db.slice('sqlite:'.length))), `volumes ${volumes}`);
  });

  it('starts the built server, with what it reads at run time, in a valid configuration', () => {
    assert.deepEqual(JSON.parse(of(runtime, Keyword.CMD)[0]?.getArgumentsContent() ?? ''), [
      'node',
      'dist/src/main.js',
    ]);
    const copies = of(runtime, Keyword.COPY) as Copy[];
    const fromBuild = copies.filter((c) => c.getFromFlag()?.getValue() === 'build').map(args);
    assert.ok(fromBuild.some(([src]) => src === '/app/dist/src'));
    assert.ok(fromBuild.some(([src]) => src === '/app/node_modules'));
    const context = copies.filter((c) => !c.getFromFlag()).flatMap((c) => args(c).slice(0, -1));
    // The web client, the OpenAPI document it serves, the `charla` command.
    for (const needed of ['web', 'docs/openapi.yaml', 'bin', 'package.json']) {
      assert.ok(context.includes(needed), `${needed} is not copied into the image`);
    }
    // The image's environment plus the two secrets is a valid production configuration.
    const config = loadConfig({ ...Object.fromEntries(env), JWT_SECRET: SECRET, API_KEY: 'k' });
    assert.equal(config.production, true);
    assert.equal(config.port, Number(env.get('PORT')));
  });

  it('copies from the build context only files that exist and .dockerignore keeps', () => {
    const ignored = read('.dockerignore')
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l && !l.startsWith('#'));
    for (const copy of of(instructions, Keyword.COPY) as Copy[]) {
      if (copy.getFromFlag()) continue;
      for (const src of args(copy).slice(0, -1)) {
        assert.ok(existsSync(join(ROOT, src)), `COPY ${src}: no such file`);
        assert.ok(!ignored.includes(src.split('/')[0] as string), `COPY ${src} is dockerignored`);
      }
    }
    for (const kept of ['node_modules', 'dist', 'data', '.git']) {
      assert.ok(ignored.includes(kept), `${kept} must not be sent to the builder`);
    }
  });
});

/** Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}`, from `vars`. */
function interpolate(value: unknown, vars: Record<string, string>): unknown {
  if (typeof value === 'string') {
    return value.replace(/\$\{(\w+)(?::?([-?])([^}]*))?\}/g, (_, name, op, arg) => {
      const v = vars[name];
      if (v !== undefined && v !== '') return v;
      if (op === '-') return arg;
      throw new Error(`${name}: ${arg}`);
    });
  }
  if (Array.isArray(value)) return value.map((v) => interpolate(v, vars));
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, interpolate(v, vars)]));
  }
  return value;
}

describe('compose.yaml', () => {
  const raw = parse(read('compose.yaml'), { merge: true });
  const compose = interpolate(raw, { JWT_SECRET: SECRET, API_KEY: 'compose-key' }) as any;
  const services = compose.services as Record<string, any>;
  const nodes = Object.entries(services).filter(
    ([, s]) => s.image === 'charla:local' && s.command === undefined,
  );

  it('is valid against the Compose Specification schema', () => {
    const require = createRequire(import.meta.url);
    const schemaFile = join(
      dirname(require.resolve('dclint/package.json')),
      'schemas/compose.schema.json',
    );
    const schema = JSON.parse(readFileSync(schemaFile, 'utf8'));
    assert.equal(schema.title, 'Compose Specification');
    // Draft 07, Ajv's default; it names it by an https address Ajv does not know.
    assert.match(schema.$schema, /draft-07/);
    delete schema.$schema;
    const ajv = new Ajv.default({ allErrors: true, strict: false });
    const validate = ajv.compile(schema);
    assert.ok(validate(raw), ajv.errorsText(validate.errors));
    // And the schema does catch a mistake.
    assert.equal(validate({ services: { a: { image: 'x', restart_policy: 'always' } } }), false);
  });

  it('refuses to start without the secrets', () => {
    assert.throws(() => interpolate(raw, {}), /JWT_SECRET/);
  });

  it('runs two charla nodes, PostgreSQL, Redis and HAProxy', () => {
    assert.deepEqual(nodes.map(([name]) => name).sort(), ['charla-a', 'charla-b']);
    assert.match(services.postgres.image, /^postgres:/);
    assert.match(services.redis.image, /^redis:/);
    assert.match(services.haproxy.image, /^haproxy:/);
    for (const [name, node] of nodes) assert.equal(node.build, '.', `${name} is built from here`);
  });

  it('gives every node a valid production configuration on the shared services', () => {
    const configs = nodes.map(([, node]) => loadConfig(node.environment));
    for (const c of configs) {
      assert.equal(c.production, true);
      assert.equal(new URL(c.databaseUrl).hostname, 'postgres');
      assert.equal(new URL(c.redisUrl ?? '').hostname, 'redis');
      assert.equal(c.host, '0.0.0.0');
    }
    // One token key, one API key and one store for all: any node serves any client.
    assert.equal(new Set(configs.map((c) => c.jwt.secret)).size, 1);
    assert.equal(new Set(configs.map((c) => c.apiKey)).size, 1);
    assert.equal(new Set(configs.map((c) => c.databaseUrl)).size, 1);
    const pg = services.postgres.environment;
    const url = new URL(configs[0]?.databaseUrl ?? '');
    assert.deepEqual(
      [url.username, url.password, url.pathname.slice(1)],
      [pg.POSTGRES_USER, pg.POSTGRES_PASSWORD, pg.POSTGRES_DB],
    );
  });

  it('starts each service after what it needs is healthy', () => {
    for (const [name, service] of Object.entries(services)) {
      for (const [dep, { condition }] of Object.entries<any>(service.depends_on ?? {})) {
        assert.ok(services[dep], `${name} depends on a missing ${dep}`);
        if (condition === 'service_healthy') {
          const image = services[dep].image;
          const checked = services[dep].healthcheck || image === 'charla:local';
          assert.ok(checked, `${name} waits for ${dep} to be healthy, which has no healthcheck`);
        }
      }
    }
    assert.deepEqual(services.migrate.command, ['node', 'bin/charla.js', 'migrate']);
    for (const [name, node] of nodes) {
      assert.equal(node.depends_on.migrate.condition, 'service_completed_successfully', name);
    }
  });

  it('runs HAProxy on deploy/haproxy.cfg, whose backend is exactly the nodes', () => {
    assert.ok(
      services.haproxy.volumes.includes(
        './deploy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro',
      ),
    );
    const cfg = read('deploy/haproxy.cfg');
    const servers = [...cfg.matchAll(/^\s*server \S+ ([\w.-]+):(\d+)/gm)].map(
      ([, h, p]) => `${h}:${p}`,
    );
    assert.deepEqual(
      servers.sort(),
      nodes.map(([name, node]) => `${name}:${node.environment.PORT}`).sort(),
    );
    const bind = /^\s*bind :(\d+)/m.exec(cfg)?.[1];
    assert.ok(services.haproxy.ports.some((p: string) => p.endsWith(`:${bind}`)));
    assert.match(cfg, /option httpchk GET \/readyz/);
  });

  it('is the HAProxy configuration the README shows', () => {
    const block = /```haproxy\n([\s\S]*?)```/.exec(read('README.md'))?.[1];
    assert.equal(block, read('deploy/haproxy.cfg'));
  });
});
