/* global module */
/**
 * `npm run test:e2e`: the compose stack, built and started by the test itself (compose.e2e.test.ts).
 * Nothing from test/support's global setup: the stack brings its own Redis and sandbox image.
 */
module.exports = {
  rootDir: '../..',
  testEnvironment: 'node',
  roots: ['<rootDir>/test/e2e'],
  testMatch: ['**/*.test.ts'],
  transform: { '^.+\\.ts$': 'ts-jest' },
  // Building images on a cold machine takes minutes; beforeAll sets its own, longer timeout.
  testTimeout: 180000,
  maxWorkers: 1,
};
