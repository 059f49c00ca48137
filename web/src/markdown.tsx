// An agent's replies as Markdown (docs/console.md, "Chat"). Their text is untrusted: an agent that read a hostile
// file or page may write HTML meant to run script, or an image whose URL carries data away the moment it loads. So
// raw HTML in a reply is shown as text, an image as a link to it (nothing loads by itself), and DOMPurify then keeps
// only the tags Markdown makes, with links to http(s) and mailto only, opened in a new tab without the console as
// their opener or referrer.
import DOMPurify from "dompurify";
import { Marked } from "marked";
import { useMemo } from "react";

const ESCAPES: Record<string, string> = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

const markdown = new Marked({
  gfm: true,
  async: false,
  renderer: {
    html: ({ text }) => escapeHtml(text),
    image: ({ href, text }) => `<a href="${escapeHtml(href)}">${escapeHtml(text || href)}</a>`,
  },
});

const ALLOWED_TAGS = ["a", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "li",
  "ol", "p", "pre", "strong", "table", "tbody", "td", "th", "thead", "tr", "ul"];
const ALLOWED_ATTR = ["href", "title", "start", "align"];
const SAFE_LINK = /^(?:https?:|mailto:)/i;

const purify = DOMPurify();
purify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName !== "A") return;
  node.setAttribute("target", "_blank");
  node.setAttribute("rel", "noopener noreferrer nofollow");
});

/** The reply's HTML: Markdown rendered, then sanitised. */
export function renderMarkdown(text: string): string {
  const html = markdown.parse(text, { async: false });
  return purify.sanitize(html, { ALLOWED_TAGS, ALLOWED_ATTR, ALLOWED_URI_REGEXP: SAFE_LINK });
}

export function Markdown({ text, className, streaming }: { text: string; className?: string; streaming?: boolean }) {
  const html = useMemo(() => renderMarkdown(text), [text]);
  return <div className={className} data-streaming={streaming || undefined} dangerouslySetInnerHTML={{ __html: html }} />;
}
