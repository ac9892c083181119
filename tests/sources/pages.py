"""Sample web pages shared by the HTML and loading tests."""

PAGE = b"""<!doctype html><html><head><meta charset="utf-8"><title>Tide tables | Harbour Office</title>
<style>body { color: red }</style><script>var tracking = "SCRIPT TEXT";</script></head>
<body>
<header><a href="/">Harbour Office</a> <a href="/contact">Contact us</a></header>
<nav><ul><li><a href="/a">Opening hours</a></li><li><a href="/b">Moorings</a></li></ul></nav>
<div class="breadcrumbs">Home &gt; Tides</div>
<main>
  <h1>Tide tables</h1>
  <p>High water at Kestrel Point is
     two hours after Dover.</p>
  <h2>Spring tides</h2>
  <ul><li>Range up to 6 m</li><li>Strong currents at the bar</li></ul>
  <pre>time   height
06:10  5.9 m</pre>
</main>
<aside>Sponsored: buy a boat</aside>
<footer>Copyright Harbour Office. All rights reserved.</footer>
</body></html>"""
