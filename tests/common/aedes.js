// A broker with WebSocket listeners for the tests: aedes (npm, installed into .cache/npm by tools/env.sh)
// behind `ws`, listening on 127.0.0.1 on plain MQTT, MQTT over WebSocket (path /mqtt) and MQTT over
// WebSocket in TLS. Prints "ready" once every listener is up.
//
//   node tests/common/aedes.js TCP_PORT WS_PORT WSS_PORT CERT_PEM KEY_PEM
'use strict'
const fs = require('fs')
const net = require('net')
const http = require('http')
const https = require('https')
const { WebSocketServer, createWebSocketStream } = require('ws')
const aedes = require('aedes')()

const [tcpPort, wsPort, wssPort, cert, key] = process.argv.slice(2)
const listening = []
const listen = (server, port) =>
  listening.push(new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(Number(port), '127.0.0.1', resolve)
  }))

function websocket (server, port) {
  const wss = new WebSocketServer({ server, path: '/mqtt' })
  wss.on('connection', (sock, req) => {
    const stream = createWebSocketStream(sock)
    stream.on('error', () => stream.destroy())
    aedes.handle(stream, req)
  })
  listen(server, port)
}

listen(net.createServer(aedes.handle), tcpPort)
websocket(http.createServer(), wsPort)
websocket(https.createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) }), wssPort)
aedes.on('clientError', () => {})
Promise.all(listening).then(
  () => console.log('ready'),
  (e) => { console.error(String(e)); process.exit(1) })
