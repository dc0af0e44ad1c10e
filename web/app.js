// Entry: picks the view from the URL fragment and hands each view its settings.
//
// Settings come in the fragment (`#view=stream&stream=demo&token=…`) because a
// fragment never leaves the browser: a token there is not sent to the server
// nor written to its access logs. The token is then moved to sessionStorage
// and wiped from the address bar and history.
import { translate } from './i18n.js';
import { mountRequestView } from './request.js';
import { mountStreamView } from './stream.js';

// Before the views mount, so that whatever they read from the page is already in the reader's language.
translate();

const views = {
  stream: mountStreamView(document.getElementById('stream-view')),
  request: mountRequestView(document.getElementById('request-view')),
};

function readFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  const view = params.get('view') === 'request' ? 'request' : 'stream';
  const token = params.get('token');
  if (token !== null) {
    sessionStorage.setItem(`charla.${view}.token`, token);
    params.delete('token');
    history.replaceState(null, '', `#${params}`);
  }
  return { view, params, fromLink: token !== null };
}

function show() {
  const { view, params, fromLink } = readFragment();
  for (const [name, v] of Object.entries(views)) {
    v.root.hidden = name !== view;
  }
  for (const tab of document.querySelectorAll('.tabs a')) {
    if (tab.dataset.view === view) tab.setAttribute('aria-current', 'page');
    else tab.removeAttribute('aria-current');
  }
  views[view].open({
    token: sessionStorage.getItem(`charla.${view}.token`) ?? '',
    // A link that carries a token signs in as that token, even in a tab signed in as someone else.
    fromLink,
    stream: params.get('stream') ?? '',
    request: params.get('request') ?? '',
  });
}

window.addEventListener('hashchange', show);
show();
