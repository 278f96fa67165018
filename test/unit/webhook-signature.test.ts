/**
 * Deliveries are signed as the Standard Webhooks specification says: checked against the spec's own
 * published vector, computed with the reference library, and verified by that library.
 */
import { Webhook } from 'standardwebhooks';
import { signWebhook, webhookSecretKey } from '../../services/shared/src/webhooks';
import { webhookConfigProblems } from '../../services/worker/src/worker-config';

const SECRET = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw';

test('the signature of the known vector is the one the reference library computes', () => {
  const key = webhookSecretKey(SECRET) as Buffer;
  const headers = signWebhook(key, 'msg_p5jXN8AQM9LWM0D4loKWxJek', 1614265330, '{"test": 2432232314}');
  // new Webhook(SECRET).sign('msg_p5jXN8AQM9LWM0D4loKWxJek', new Date(1614265330000), '{"test": 2432232314}')
  expect(headers).toEqual({
    'webhook-id': 'msg_p5jXN8AQM9LWM0D4loKWxJek',
    'webhook-timestamp': '1614265330',
    'webhook-signature': 'v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=',
  });
  expect(new Webhook(SECRET).sign('msg_p5jXN8AQM9LWM0D4loKWxJek', new Date(1614265330_000), '{"test": 2432232314}')).toBe(headers['webhook-signature']);
});

test('the reference library verifies a fresh signature, and refuses a changed body or another secret', () => {
  const key = webhookSecretKey(SECRET) as Buffer;
  const body = JSON.stringify({ type: 'job.succeeded', data: { id: 'x', result: { output: 'é ✓' } } });
  const headers = signWebhook(key, 'msg_x', Math.floor(Date.now() / 1000), body);
  expect(new Webhook(SECRET).verify(body, headers)).toEqual(JSON.parse(body));
  expect(() => new Webhook(SECRET).verify(body.replace('x', 'y'), headers)).toThrow();
  expect(() => new Webhook('whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA').verify(body, headers)).toThrow();
});

test('a secret must be whsec_ and the base64 of 24 to 64 bytes', () => {
  expect(webhookSecretKey(SECRET)?.length).toBe(24);
  expect(webhookSecretKey(`whsec_${Buffer.alloc(32, 7).toString('base64')}`)?.length).toBe(32);
  for (const bad of ['MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', 'whsec_', 'whsec_c2hvcnQ=', 'whsec_not base64!', `whsec_${Buffer.alloc(65).toString('base64')}`]) {
    expect(webhookSecretKey(bad)).toBeNull();
  }
});

test('the worker refuses webhooks without a secret, a malformed secret and a URL while webhooks are off, never echoing the secret', () => {
  expect(webhookConfigProblems({ WEBHOOKS_ENABLED: true, WEBHOOK_SECRET: SECRET })).toEqual([]);
  expect(webhookConfigProblems({ WEBHOOKS_ENABLED: false })).toEqual([]);
  expect(webhookConfigProblems({ WEBHOOKS_ENABLED: true })).toEqual([expect.stringMatching(/^WEBHOOKS_ENABLED=true needs WEBHOOK_SECRET/)]);
  const bad = webhookConfigProblems({ WEBHOOKS_ENABLED: true, WEBHOOK_SECRET: 'hunter2-hunter2' });
  expect(bad).toEqual([expect.stringMatching(/^invalid WEBHOOK_SECRET/)]);
  expect(bad.join()).not.toContain('hunter2');
  expect(webhookConfigProblems({ WEBHOOKS_ENABLED: false, WEBHOOK_URL: 'https://hooks.example.com/' })).toEqual([expect.stringMatching(/^WEBHOOK_URL is set but webhooks are off/)]);
});
