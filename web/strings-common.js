// The common strings of the web client's catalog (see i18n.js): the page
// header and the helpers of dom.js that both views use. Both languages hold
// the same keys.
export default {
  en: {
    'app.tabs': 'Chats',
    'app.tab.stream': 'Live stream',
    'app.tab.request': 'Request chat',

    'status.idle': 'Not connected',
    'status.connecting': 'Connecting…',
    'status.connected': 'Connected',
    'status.live': 'Live',
    'status.reconnecting': 'Reconnecting…',
    'status.offline': 'Offline',
    'status.disconnected': 'Disconnected',

    'notice.lost': 'Connection lost. Reconnecting…',
    'notice.lostAttempt': 'Connection lost. Reconnecting (attempt {attempt})…',
    'notice.reconnected': 'Reconnected.',
    'notice.rateLimited': "You're sending too fast. You can send again in {seconds} s.",

    'time.yesterday': 'yesterday',
    'time.dayAndTime': '{day}, {time}',

    'field.token': 'Token',
    'field.message': 'Message',
    'action.send': 'Send',
    'action.save': 'Save',
    'action.cancel': 'Cancel',
    'action.change': 'Change',
    'who.you': 'You are',
  },
  es: {
    'app.tabs': 'Chats',
    'app.tab.stream': 'Transmisión en vivo',
    'app.tab.request': 'Chat de solicitud',

    'status.idle': 'Sin conexión',
    'status.connecting': 'Conectando…',
    'status.connected': 'Conectado',
    'status.live': 'En vivo',
    'status.reconnecting': 'Reconectando…',
    'status.offline': 'Sin conexión',
    'status.disconnected': 'Desconectado',

    'notice.lost': 'Se perdió la conexión. Reconectando…',
    'notice.lostAttempt': 'Se perdió la conexión. Reconectando (intento {attempt})…',
    'notice.reconnected': 'Reconectado.',
    'notice.rateLimited': 'Estás enviando muy rápido. Podrás enviar de nuevo en {seconds} s.',

    'time.yesterday': 'ayer',
    'time.dayAndTime': '{day}, {time}',

    'field.token': 'Token',
    'field.message': 'Mensaje',
    'action.send': 'Enviar',
    'action.save': 'Guardar',
    'action.cancel': 'Cancelar',
    'action.change': 'Cambiar',
    'who.you': 'Eres',
  },
};
