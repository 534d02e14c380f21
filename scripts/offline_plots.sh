#!/usr/bin/env bash
# Writes .dvc/plots/offline.html: the page `dvc plots show` fills (`.dvc/config` plots.html_template), with Vega,
# Vega-Lite and vega-embed inlined from pinned npm packages instead of the script tags that load them from a CDN,
# so the plots render on a machine without internet. Needs npm; the page is committed, so users never run this.
set -euo pipefail
cd "$(dirname "$0")/.."
VEGA=5.33.1 VEGA_LITE=5.23.0 VEGA_EMBED=6.29.0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "vega@$VEGA" "vega-lite@$VEGA_LITE" "vega-embed@$VEGA_EMBED" >/dev/null)
for pkg in vega-$VEGA vega-lite-$VEGA_LITE vega-embed-$VEGA_EMBED; do
  mkdir -p "$tmp/$pkg" && tar xzf "$tmp/$pkg.tgz" -C "$tmp/$pkg"
done
out=.dvc/plots/offline.html
{
  printf '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n<title>DVC Plot</title>\n'
  printf '<!-- vega %s, vega-lite %s, vega-embed %s (BSD-3-Clause), inlined by scripts/offline_plots.sh -->\n' \
    "$VEGA" "$VEGA_LITE" "$VEGA_EMBED"
  for js in vega-$VEGA/package/build/vega.min.js vega-lite-$VEGA_LITE/package/build/vega-lite.min.js \
            vega-embed-$VEGA_EMBED/package/build/vega-embed.min.js; do
    if grep -q '</script' "$tmp/$js" || grep -Eq '\{(plot_divs|scripts|refresh_tag)\}' "$tmp/$js"; then
      echo "$js: holds text the page cannot inline" >&2; exit 1
    fi
    printf '<script>\n'; cat "$tmp/$js"; printf '\n</script>\n'
  done
  printf '<style>table { border-spacing: 15px; }</style>\n</head>\n<body>\n{plot_divs}\n</body>\n</html>\n'
} > "$out.tmp"
mv "$out.tmp" "$out"
echo "$out: $(wc -c < "$out") bytes"
