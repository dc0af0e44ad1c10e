// The request strings of the web client's catalog (see i18n.js). Both languages hold the same keys.
export default {
  en: {},
  es: {},
};
