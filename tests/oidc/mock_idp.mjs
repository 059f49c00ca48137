// A real OpenID Connect provider for the integration tests: oauth2-mock-server on a free loopback
// port, with an RS256 key, discovery, JWKS, PKCE checks and the nonce echoed into the ID token.
//
// It approves every authorization request. Who signs in is chosen by the test acting as the
// browser, the way a person would type it into the provider's login form: it adds to the
// authorization URL `claims` (a JSON object merged into the ID token, e.g. sub, email,
// email_verified, name, or a wrong aud) and optionally `userinfo` (a JSON object the userinfo
// endpoint then answers for that sign-in's access token).
//
// Prints {"issuer": ...} on one line when ready; exits when stdin closes (the test process died).
import { OAuth2Server } from 'oauth2-mock-server';

const server = new OAuth2Server();
await server.issuer.keys.generate('RS256');

const signInByCode = new Map(); // authorization code -> {claims, userinfo}
const userinfoByAccessToken = new Map();

function parsed(value) {
  return typeof value === 'string' ? JSON.parse(value) : undefined;
}

server.service.on('beforeAuthorizeRedirect', ({ url }, req) => {
  const code = url.searchParams.get('code');
  if (code) {
    signInByCode.set(code, { claims: parsed(req.query.claims) ?? {}, userinfo: parsed(req.query.userinfo) });
  }
});

server.service.on('beforeTokenSigning', (token, req) => {
  // The library signs the access token and then the ID token; only the ID token has an audience.
  const signIn = signInByCode.get(req.body.code);
  if (signIn && 'aud' in token.payload) {
    Object.assign(token.payload, signIn.claims);
  }
});

server.service.on('beforeResponse', (response, req) => {
  const signIn = signInByCode.get(req.body.code);
  signInByCode.delete(req.body.code);
  if (signIn?.userinfo && response.body.access_token) {
    userinfoByAccessToken.set(response.body.access_token, signIn.userinfo);
  }
});

server.service.on('beforeUserinfo', (response, req) => {
  const bearer = (req.headers.authorization ?? '').replace(/^Bearer /i, '');
  const userinfo = userinfoByAccessToken.get(bearer);
  if (userinfo) {
    response.body = userinfo;
  } else {
    response.statusCode = 401;
    response.body = { error: 'invalid_token' };
  }
});

await server.start(0, '127.0.0.1');
// The library would name the issuer http://localhost:<port>; keep the address we listen on.
server.issuer.url = `http://127.0.0.1:${server.address().port}`;
process.stdout.write(`${JSON.stringify({ issuer: server.issuer.url })}\n`);

// Exit at once: a graceful close would wait for the clients' keep-alive connections.
const stop = () => process.exit(0);
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
process.stdin.on('end', stop);
process.stdin.resume();
