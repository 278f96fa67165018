import { dropRoot, socketPathOf, WORKER_GID, WORKER_UID, type IdentityCalls } from '../../services/worker/src/privileges';

/** A process identity that records what the worker changes, in order, and enforces root's rules. */
function identity(startUid: number, failing?: keyof IdentityCalls): IdentityCalls & { calls: string[] } {
  let uid = startUid;
  const calls: string[] = [];
  const guard = (name: keyof IdentityCalls): void => {
    if (name === failing) throw new Error('EPERM, Operation not permitted');
    if (uid !== 0) throw new Error(`${name} after root was dropped`);
  };
  return {
    calls,
    getuid: () => uid,
    setgroups(groups) {
      guard('setgroups');
      calls.push(`setgroups ${groups.join(',')}`);
    },
    setgid(id) {
      guard('setgid');
      calls.push(`setgid ${id}`);
    },
    setuid(id) {
      guard('setuid');
      calls.push(`setuid ${id}`);
      uid = id;
    },
  };
}

describe('the worker dropping root at start', () => {
  test("started as root, it takes the socket's group, then gid and uid 1000, uid last", () => {
    const me = identity(0);
    const dropped = dropRoot(undefined, me, (path) => (path === '/var/run/docker.sock' ? 988 : undefined));
    expect(dropped).toEqual({ uid: WORKER_UID, gid: WORKER_GID, socketGid: 988 });
    expect(me.calls).toEqual(['setgroups 988', 'setgid 1000', 'setuid 1000']);
  });

  test('the socket comes from a unix:// DOCKER_HOST; a TCP engine needs no group', () => {
    expect(socketPathOf('unix:///run/user/1000/docker.sock')).toBe('/run/user/1000/docker.sock');
    expect(socketPathOf(undefined)).toBe('/var/run/docker.sock');
    expect(socketPathOf('tcp://docker.internal:2376')).toBeUndefined();
    const me = identity(0);
    dropRoot('tcp://docker.internal:2376', me, () => 5);
    expect(me.calls).toEqual(['setgroups ', 'setgid 1000', 'setuid 1000']);
  });

  test('with no socket to look at, it still drops root, with no extra group', () => {
    const me = identity(0);
    expect(dropRoot(undefined, me, () => undefined)).toEqual({ uid: 1000, gid: 1000, socketGid: undefined });
    expect(me.calls).toEqual(['setgroups ', 'setgid 1000', 'setuid 1000']);
  });

  test('started as another user, it changes nothing', () => {
    const me = identity(1000);
    expect(dropRoot(undefined, me, () => 988)).toBeUndefined();
    expect(me.calls).toEqual([]);
  });

  test('without the capabilities to change ids, it refuses to go on as root and says what to grant', () => {
    expect(() => dropRoot(undefined, identity(0, 'setgroups'), () => 988)).toThrow(
      /^cannot stop running as root \(EPERM, Operation not permitted\): give the container CAP_SETUID and CAP_SETGID/,
    );
  });
});
