/** The HTML page at /docs: descriptions' markup rendered, never raw HTML from the text. */
import { buildOpenApi, renderDocsPage, renderInline } from '../../services/api/src/openapi';
import { loadConfig } from '../../services/shared/src/config';

const doc = (op: Record<string, unknown>): Record<string, unknown> => ({
  paths: { '/x': { get: { responses: { '200': { description: 'ok' } }, ...op } } },
  components: { schemas: { JobRequest: {} } },
});

describe('renderInline', () => {
  test.each([
    ['`code` spans', 'Send `Last-Event-ID` to resume.', 'Send <code>Last-Event-ID</code> to resume.'],
    ['**bold** spans', 'This is **important**.', 'This is <strong>important</strong>.'],
    ['code inside bold', '**see `x`**', '<strong>see <code>x</code></strong>'],
    ['bold markers inside code, literally', '`a**b**c`', '<code>a**b**c</code>'],
    ['an unpaired backtick, as text', 'one ` tick', 'one ` tick'],
    ['no span across lines', 'a `b\nc` d', 'a `b\nc` d'],
  ])('renders %s', (_name, input, html) => {
    expect(renderInline(input)).toBe(html);
  });

  test('escapes HTML first, inside and outside the spans, so text never becomes markup', () => {
    expect(renderInline('`<script>alert(1)</script>` & <b>x</b> **<img src=x onerror=y>**')).toBe(
      '<code>&#60;script&#62;alert(1)&#60;/script&#62;</code> &#38; &#60;b&#62;x&#60;/b&#62; <strong>&#60;img src=x onerror=y&#62;</strong>',
    );
    expect(renderInline('`"quoted" \'single\'`')).toBe('<code>&#34;quoted&#34; &#39;single&#39;</code>');
  });
});

describe('renderDocsPage', () => {
  test("the real document's descriptions show their code spans as <code>, with no backtick left outside the schema", () => {
    const page = renderDocsPage(buildOpenApi(loadConfig({})));
    expect(page).toContain('<code>host_not_allowed</code>');
    expect(page).toContain('<code>Last-Event-ID</code>');
    expect(page).toContain('<code>too_many_active_jobs</code>');
    const [beforeSchema] = page.split('<h2>Job request schema</h2>');
    expect(beforeSchema).not.toContain('`');
  });

  test('summaries, descriptions and response descriptions are rendered; markup in them stays text', () => {
    const page = renderDocsPage(
      doc({
        summary: 'Get `x` <i>now</i>',
        description: '**Careful**: `<script>`',
        responses: { '404': { description: 'No `x` here.' } },
      }),
    );
    expect(page).toContain('<p>Get <code>x</code> &#60;i&#62;now&#60;/i&#62;</p>');
    expect(page).toContain('<p><strong>Careful</strong>: <code>&#60;script&#62;</code></p>');
    expect(page).toContain('<li><code>404</code> No <code>x</code> here.</li>');
    expect(page).not.toMatch(/<script|<i>/);
  });
});
