import { mkdir, realpath, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { ConfigError } from '../../services/shared/src/config';
import { parseMountPoints, validateAllowedDirs } from '../../services/worker/src/allowed-dirs';
import { makeAllowedDir, removeAllowedDir } from '../support/allowed-dir';

const OUTPUT_DIR = '/output';
let base: string;
let good: string;
let codeDir: string;

/** What the validator says of `dirs`: the one-line message it throws, or '' when it accepts them. */
async function refusal(dirs: string[], mountInfo = ''): Promise<string> {
  try {
    await validateAllowedDirs(dirs, { codeDir, outputDir: OUTPUT_DIR, mountInfo });
    return '';
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    return err.message;
  }
}

/** A mountinfo line as the kernel writes it, with `point` as the mount point (field 5). */
function mountLine(id: number, point: string): string {
  const escaped = point.replace(/[ \t\n\\]/g, (c) => `\\${c.charCodeAt(0).toString(8).padStart(3, '0')}`);
  return `${id} 26 0:${id} / ${escaped} rw,relatime shared:${id} - tmpfs tmpfs rw,size=1024k`;
}

beforeAll(async () => {
  base = await realpath(await makeAllowedDir('allowed-dirs-unit'));
  good = path.join(base, 'good');
  codeDir = path.join(base, 'code');
  for (const dir of [good, codeDir, path.join(codeDir, 'services'), path.join(good, 'sub'), path.join(good, 'with space')]) await mkdir(dir);
  await writeFile(path.join(base, 'file.txt'), 'not a dir\n');
  await symlink('/etc', path.join(base, 'etc-link'));
  await symlink('/usr/share', path.join(base, 'share-link'));
  await symlink(codeDir, path.join(base, 'code-link'));
  await symlink(good, path.join(base, 'good-link'));
});

afterAll(async () => {
  if (base) await removeAllowedDir(base);
});

describe('ALLOWED_DIRS values start-up refuses, each with one line naming the variable, the entry and why', () => {
  const cases: [string, () => string, RegExp][] = [
    ['a relative path', () => 'data/files', /is not an absolute path/],
    ['a path with a NUL byte', () => `${good}\0x`, /contains a NUL byte/],
    ['a path with a "." segment', () => `${base}/./good`, /is not normalised/],
    ['a path with a repeated "/"', () => `${base}//good`, /is not normalised/],
    ['a path with a ".." segment', () => `${good}/../good`, /is not normalised/],
    ['a path with two trailing slashes', () => `${good}//`, /is not normalised/],
    ['a path that does not exist', () => path.join(base, 'missing'), /does not exist/],
    ['a file', () => path.join(base, 'file.txt'), /is not a directory/],
    ['the root', () => '/', /is the root directory/],
    ['/proc', () => '/proc', /is \/proc \(/],
    ['a dir under /proc', () => '/proc/self', /lies under \/proc \(/],
    ['/sys', () => '/sys', /is \/sys \(/],
    ['/dev', () => '/dev', /is \/dev \(/],
    ['/etc', () => '/etc', /is \/etc \(/],
    ['a dir under /etc', () => '/etc/ssl', /lies under \/etc \(/],
    ['/usr', () => '/usr', /is \/usr \(/],
    ['/bin', () => '/bin', /is \/bin \(/],
    ['/sbin', () => '/sbin', /is \/sbin \(/],
    ['/lib', () => '/lib', /is \/lib \(/],
    ['/lib64', () => '/lib64', /is \/lib64 \(/],
    ['/lib32', () => '/lib32', /is \/lib32 \(/],
    ['/libx32', () => '/libx32', /is \/libx32 \(/],
    ['a dir under a /lib… dir', () => '/lib/x86_64-linux-gnu', /lies under \/lib \(/],
    ['/boot', () => '/boot', /is \/boot \(/],
    ['/run', () => '/run', /is \/run \(/],
    ['/var/run', () => '/var/run', /is \/var\/run \(/],
    ['/var/lib/docker', () => '/var/lib/docker', /is \/var\/lib\/docker \(/],
    ['a dir under /var/lib/docker', () => '/var/lib/docker/volumes', /lies under \/var\/lib\/docker \(/],
    ['a dir that covers /var/lib/docker', () => '/var/lib', /covers \/var\/lib\/docker \(/],
    ['/var, which covers /var/run', () => '/var', /covers \/var\/(run|lib\/docker) \(/],
    ['/tmp', () => '/tmp', /is \/tmp \(/],
    ['a dir under /tmp', () => '/tmp/data', /lies under \/tmp \(/],
    ['the sandbox output dir', () => OUTPUT_DIR, /is \/output \(the sandbox's output dir\)/],
    ['a dir under the output dir', () => `${OUTPUT_DIR}/files`, /lies under \/output \(/],
    ["the sandbox's inputs dir", () => '/input', /is \/input \(the sandbox's inputs dir\)/],
    ["a dir under the sandbox's inputs dir", () => '/input/data', /lies under \/input \(the sandbox's inputs dir\)/],
    ['a dir that covers the runner', () => '/opt', /covers \/opt\/maestro \(the sandbox's runner\)/],
    ["the worker's own code", () => codeDir, /is .* \(the worker's own code\)/],
    ["a dir under the worker's code", () => path.join(codeDir, 'services'), /lies under .* \(the worker's own code\)/],
    ["a dir that covers the worker's code", () => base, /covers .* \(the worker's own code\)/],
    ['a symlink to /etc', () => path.join(base, 'etc-link'), /resolves to \/etc, which is \/etc \(/],
    ['a symlink into /usr', () => path.join(base, 'share-link'), /resolves to \/usr\/share, which lies under \/usr \(/],
    ["a symlink to the worker's code", () => path.join(base, 'code-link'), /resolves to .*, which is .* \(the worker's own code\)/],
  ];

  test.each(cases)('%s', async (_name, entry, why) => {
    const dir = entry();
    const message = await refusal([good, dir]);
    expect(message).toMatch(/^invalid ALLOWED_DIRS: /);
    expect(message).not.toMatch(/\n/);
    expect(message).toContain(JSON.stringify(dir));
    expect(message).toMatch(why);
    expect(message).not.toContain(JSON.stringify(good));
  });

  test('several bad entries are all named, in the same line', async () => {
    const message = await refusal(['/etc', good, '/tmp']);
    expect(message).toMatch(/^invalid ALLOWED_DIRS: "\/etc" is \/etc \(.*\); "\/tmp" is \/tmp \(.*\)$/);
  });
});

describe('ALLOWED_DIRS values start-up accepts', () => {
  test('an existing dir elsewhere comes back as its real path, with no mounts below it', async () => {
    await expect(validateAllowedDirs([good], { codeDir, outputDir: OUTPUT_DIR, mountInfo: '' })).resolves.toEqual({ dirs: [good], readOnlyMounts: [] });
  });

  test('no dirs at all', async () => {
    await expect(validateAllowedDirs([], { codeDir, outputDir: OUTPUT_DIR })).resolves.toEqual({ dirs: [], readOnlyMounts: [] });
  });

  test('a single trailing slash, a symlink and a repeat all come back as one real path', async () => {
    const { dirs } = await validateAllowedDirs([`${good}/`, path.join(base, 'good-link'), good], { codeDir, outputDir: OUTPUT_DIR, mountInfo: '' });
    expect(dirs).toEqual([good]);
  });

  test("a sibling whose name only starts with the worker's code dir", async () => {
    await mkdir(`${codeDir}-other`);
    expect(await refusal([`${codeDir}-other`])).toBe('');
  });
});

describe('mounts below the allowed dirs', () => {
  test('the mount point is the fifth field, with the kernel octal escapes undone', () => {
    const text = [mountLine(40, '/srv/a b'), mountLine(41, '/srv/tab\there'), mountLine(42, '/srv/back\\slash'), ''].join('\n');
    expect(parseMountPoints(text)).toEqual(['/srv/a b', '/srv/tab\there', '/srv/back\\slash']);
  });

  test('are returned when strictly below an allowed dir, and no other mount is', async () => {
    const mountInfo = [
      mountLine(26, '/'),
      mountLine(50, good),
      mountLine(51, path.join(good, 'sub')),
      mountLine(52, path.join(good, 'with space')),
      mountLine(53, path.join(good, 'sub')),
      mountLine(54, `${good}-evil`),
      mountLine(55, '/var/lib/docker'),
    ].join('\n');
    const { readOnlyMounts } = await validateAllowedDirs([good], { codeDir, outputDir: OUTPUT_DIR, mountInfo });
    expect(readOnlyMounts).toEqual([path.join(good, 'sub'), path.join(good, 'with space')]);
  });

  test('a mount below an allowed dir that cannot be reached is refused, naming the mount', async () => {
    const hidden = path.join(good, 'hidden', 'mnt');
    const message = await refusal([good], mountLine(60, hidden));
    expect(message).toMatch(/^invalid ALLOWED_DIRS: the mount .* cannot be made read-only/);
    expect(message).toContain(JSON.stringify(hidden));
    expect(message).not.toMatch(/\n/);
  });
});
