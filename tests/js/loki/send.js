// Sends a few lines to a Loki push URL with winston-loki (snappy protobuf), then prints
// the Content-Type it used: winston-loki falls back to JSON, silently, without snappy.
// Usage: node send.js URL TOKEN
const winston = require('winston')
const LokiTransport = require('winston-loki')

const [host, token] = process.argv.slice(2)
const errors = []
const transport = new LokiTransport({
  host,
  json: false,
  batching: true,
  interval: 0.1, // seconds
  headers: { Authorization: `Bearer ${token}` },
  labels: { service_name: 'node-shop', env: 'test' },
  format: winston.format.printf(info => info.message),
  onConnectionError: err => errors.push(String(err))
})
const logger = winston.createLogger({ level: 'debug', transports: [transport] })

async function main () {
  logger.debug('cart opened')
  logger.warn('card declined', { labels: { order_id: 'A7' } })
  logger.error('checkout down')
  await transport.flush()
  console.log(JSON.stringify({ contentType: transport.batcher.contentType, errors }))
  process.exit(0) // winston-loki's exit hook and batch loop would keep node alive
}

main().catch(err => { console.error(err); process.exit(1) })
