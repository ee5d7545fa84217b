// Write private signing JWKs (RS256 + ES256) for the test IdP.
// usage: node genkeys.mjs jwks.json [--rotate]
// --rotate prepends a fresh pair and keeps the old keys published (the first key of a
// type signs, so new tokens carry the new kid while old tokens still verify).
import { generateKeyPair, exportJWK } from 'jose';
import { readFileSync, writeFileSync, existsSync, renameSync } from 'node:fs';
import { randomBytes } from 'node:crypto';

const [file = 'jwks.json', flag] = process.argv.slice(2);
// Date.now() alone collides when two rotations land in the same millisecond.
const stamp = `${Date.now().toString(36)}${randomBytes(3).toString('hex')}`;

async function make(alg) {
  const { privateKey } = await generateKeyPair(alg, { extractable: true, modulusLength: 2048 });
  return { ...(await exportJWK(privateKey)), alg, use: 'sig', kid: `${alg.toLowerCase()}-${stamp}` };
}

const fresh = [await make('RS256'), await make('ES256')];
const old = flag === '--rotate' && existsSync(file) ? JSON.parse(readFileSync(file, 'utf8')).keys : [];
const keys = [...fresh, ...old];
// Write then rename so a concurrently reloading server never reads a half-written file.
writeFileSync(`${file}.tmp`, JSON.stringify({ keys }, null, 2), { mode: 0o600 });
renameSync(`${file}.tmp`, file);
console.log(`${file}: ${keys.map((k) => k.kid).join(', ')}`);
