// Sort a table by the clicked column: numbers by data-v, text by content.
document.querySelectorAll("table.sortable th[data-sort]").forEach(function (th) {
  function sort() {
    var table = th.closest("table"), body = table.tBodies[0], col = th.cellIndex;
    var asc = th.getAttribute("aria-sort") !== "ascending";
    table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
    var num = th.dataset.sort === "num";
    function key(row) {
      var cell = row.cells[col], v = cell.dataset.v;
      if (!num) return cell.textContent.trim();
      return v === undefined || v === "" ? -Infinity : parseFloat(v);
    }
    Array.from(body.rows)
      .sort(function (a, b) {
        var x = key(a), y = key(b);
        var d = num ? x - y : String(x).localeCompare(String(y));
        return asc ? d : -d;
      })
      .forEach(function (row) { body.appendChild(row); });
  }
  th.addEventListener("click", sort);
  th.addEventListener("keydown", function (e) { if (e.key === "Enter") sort(); });
});
