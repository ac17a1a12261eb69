// The status page's buttons and login form (DESIGN 4.3). Served from /static/page.js because
// the admin listener's Content-Security-Policy (default-src 'self') runs no inline script.
// Every state-changing request is a same-origin fetch() with a JSON body: the admin listener
// refuses other content types (415) and other origins (403).
(function () {
  'use strict';

  function post(path, body) {
    return fetch(path, {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(body || {})
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (json) {
        return { ok: response.ok, status: response.status, body: json };
      });
    });
  }

  function say(text, bad) {
    var flash = document.getElementById('flash');
    if (!flash) { return; }
    flash.textContent = text;
    flash.className = bad ? 'bad' : 'ok';
  }

  function answered(done) {
    return function (result) {
      if (result.ok) {
        say(done(result.body), false);
        setTimeout(function () { location.reload(); }, 800);
      } else {
        say('HTTP ' + result.status + ': ' + (result.body.error || result.body.status || 'failed'), true);
      }
    };
  }

  function failed(error) { say(String(error), true); }

  var actions = {
    retry: function (button) {
      return post('/api/v1/dead-letters/' + encodeURIComponent(button.dataset.id) + '/retry')
        .then(answered(function () { return 'dead letter ' + button.dataset.id + ' retried'; }));
    },
    trigger: function (button) {
      return post('/api/v1/rules/' + encodeURIComponent(button.dataset.rule) + '/trigger', { inputs: {} })
        .then(answered(function (body) { return 'triggered ' + body.rule + ' (event ' + body.event_id + ')'; }));
    },
    reload: function () {
      return post('/api/v1/reload')
        .then(answered(function (body) { return 'rules ' + body.status; }));
    },
    logout: function () {
      return post('/logout').then(function () { location.reload(); });
    }
  };

  document.addEventListener('click', function (event) {
    var button = event.target.closest('button[data-action]');
    if (!button || !actions[button.dataset.action]) { return; }
    event.preventDefault();
    button.disabled = true;
    actions[button.dataset.action](button).catch(failed).then(function () { button.disabled = false; });
  });

  document.addEventListener('DOMContentLoaded', function () {
    var form = document.getElementById('login');
    if (!form) { return; }
    form.addEventListener('submit', function (event) {
      event.preventDefault();
      post('/login', { token: form.elements.token.value }).then(function (result) {
        if (result.ok) {
          location.reload();
        } else {
          say(result.body.error || ('HTTP ' + result.status), true);
        }
      }).catch(failed);
    });
  });
}());
