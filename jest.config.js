/** Tests run against real Redis and a real Docker engine; see test/support/global-setup.ts. */
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/test'],
  testMatch: ['**/*.test.ts'],
  // Heavy tests (gigabytes moved, thousands of jobs) run after the rest, alone: beside another test
  // file they starve its sandboxes of CPU on a 2-core machine (`npm run test:heavy`).
  testPathIgnorePatterns: process.env.MAESTRO_HEAVY_TESTS === '1' ? ['/node_modules/', '/test/e2e/'] : ['/node_modules/', '/test/e2e/', '\\.heavy\\.test\\.ts$'],
  transform: { '^.+\\.ts$': 'ts-jest' },
  globalSetup: '<rootDir>/test/support/global-setup.ts',
  globalTeardown: '<rootDir>/test/support/global-teardown.ts',
  testTimeout: 60000,
  maxWorkers: 2,
};
