// Pre-selects the browser's time zone on the sign-up form, unless the reader chose
// one (data-explicit). Without JavaScript the configured default stays selected.
(function () {
  var s = document.getElementById("timezone");
  if (!s || s.dataset.explicit) return;
  try {
    var tz = Intl.DateTimeFormat().resolvedOptions().timeZone;
    for (var i = 0; i < s.options.length; i++) {
      if (s.options[i].value === tz) { s.selectedIndex = i; break; }
    }
  } catch (e) {}
})();
